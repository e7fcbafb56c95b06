"""Reusable test infrastructure: real Kafka (Tansu), S3 (moto) and process helpers."""
