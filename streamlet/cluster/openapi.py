"""The OpenAPI 3.1 document of the job manager's REST API (served at `/api/v1/openapi.json`).

A test checks that every route the application serves is described here and vice versa.
"""

from typing import Any


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


ERRORS = {
    "401": _json(_ref("Error"), "missing or wrong token"),
}
JOB_ID = {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}}
NOT_FOUND = {"404": _json(_ref("Error"), "no such job")}

DOCUMENT: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "streamlet job manager",
        "version": "1",
        "description": "Submit, list, inspect, savepoint, stop and cancel jobs; task managers "
        "register and send heartbeats here. Every call needs "
        "`Authorization: Bearer <cluster.token>`.",
    },
    "security": [{"token": []}],
    "paths": {
        "/api/v1/openapi.json": {
            "get": {"summary": "This document", "responses": {"200": {"description": "OpenAPI"}}}
        },
        "/api/v1/jobs": {
            "get": {
                "summary": "All jobs",
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "properties": {"jobs": {"type": "array", "items": _ref("JobSummary")}},
                        },
                        "jobs, oldest first",
                    ),
                    **ERRORS,
                },
            },
            "post": {
                "summary": "Submit a job (a module name, a .py job module or a .zip archive)",
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref("Submission")}},
                },
                "responses": {
                    "201": _json(_ref("JobSummary"), "the job, with its id"),
                    "400": _json(_ref("Error"), "broken module, bad configuration or request"),
                    **ERRORS,
                },
            },
        },
        "/api/v1/jobs/{job_id}": {
            "get": {
                "summary": "A job's status, metrics, configuration and endpoints",
                "parameters": [JOB_ID],
                "responses": {"200": _json(_ref("JobStatus"), "the job"), **NOT_FOUND, **ERRORS},
            }
        },
        "/api/v1/jobs/{job_id}/cancel": {
            "post": {
                "summary": "Cancel a job (its task manager stops it after a final checkpoint)",
                "parameters": [JOB_ID],
                "responses": {
                    "202": _json(_ref("JobSummary"), "cancelling"),
                    **NOT_FOUND,
                    **ERRORS,
                },
            }
        },
        "/api/v1/jobs/{job_id}/savepoints": {
            "get": {
                "summary": "The savepoints taken of the job (HA metadata), newest first",
                "parameters": [JOB_ID],
                "responses": {
                    "200": _json(_ref("Savepoints"), "the job's savepoints"),
                    **NOT_FOUND,
                    **ERRORS,
                },
            },
            "post": {
                "summary": "Take a savepoint of the running job; answers once it completed",
                "parameters": [JOB_ID],
                "requestBody": {
                    "required": False,
                    "content": {"application/json": {"schema": _ref("SavepointRequest")}},
                },
                "responses": {
                    "201": _json(_ref("Savepoint"), "the savepoint, complete"),
                    "400": _json(_ref("Error"), "a bad url or format"),
                    **NOT_FOUND,
                    "409": _json(_ref("Error"), "the job is not running"),
                    "500": _json(_ref("Error"), "the savepoint failed (the job goes on); why"),
                    **ERRORS,
                },
            },
        },
        "/api/v1/jobs/{job_id}/stop": {
            "post": {
                "summary": "Stop the job with a savepoint as its final checkpoint (sinks commit; "
                "the job ends CANCELED); answers once the savepoint completed",
                "parameters": [JOB_ID],
                "requestBody": {
                    "required": False,
                    "content": {"application/json": {"schema": _ref("StopRequest")}},
                },
                "responses": {
                    "200": _json(_ref("Savepoint"), "the savepoint, complete; the job is ending"),
                    "400": _json(_ref("Error"), "a bad savepoint_url or format"),
                    **NOT_FOUND,
                    "409": _json(_ref("Error"), "the job is not running, or already stopping"),
                    "500": _json(_ref("Error"), "the savepoint failed (the job goes on); why"),
                    **ERRORS,
                },
            }
        },
        "/api/v1/jobs/{job_id}/checkpoints": {
            "get": {
                "summary": "The job's checkpoints on the DFS",
                "parameters": [JOB_ID],
                "responses": {
                    "200": _json(_ref("Checkpoints"), "checkpoint ids, newest first"),
                    **NOT_FOUND,
                    **ERRORS,
                },
            }
        },
        "/api/v1/jobs/{job_id}/endpoints": {
            "get": {
                "summary": "Network endpoints the job registered (e.g. the compaction service)",
                "parameters": [JOB_ID],
                "responses": {
                    "200": _json(_ref("Endpoints"), "host:port list"),
                    **NOT_FOUND,
                    **ERRORS,
                },
            }
        },
        "/api/v1/jobs/{job_id}/files/{name}": {
            "get": {
                "summary": "A file the job was submitted with (task managers fetch it)",
                "parameters": [
                    JOB_ID,
                    {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}},
                ],
                "responses": {
                    "200": {
                        "description": "the file's bytes",
                        "content": {"application/octet-stream": {}},
                    },
                    **NOT_FOUND,
                    **ERRORS,
                },
            }
        },
        "/api/v1/endpoints/{job_name}": {
            "get": {
                "summary": "Endpoints of all running jobs named job_name (`job:<name>` addresses)",
                "parameters": [
                    {
                        "name": "job_name",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string"},
                    }
                ],
                "responses": {"200": _json(_ref("Endpoints"), "host:port list"), **ERRORS},
            }
        },
        "/api/v1/taskmanagers": {
            "get": {
                "summary": "Registered task managers and their free slots",
                "responses": {"200": {"description": "task managers"}, **ERRORS},
            },
            "post": {
                "summary": "Register a task manager (with the deployments it still runs)",
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref("Registration")}},
                },
                "responses": {"200": _json(_ref("HeartbeatAnswer"), "what to run"), **ERRORS},
            },
        },
        "/api/v1/taskmanagers/{tm_id}/heartbeat": {
            "post": {
                "summary": "A task manager's periodic report",
                "parameters": [
                    {"name": "tm_id", "in": "path", "required": True, "schema": {"type": "string"}}
                ],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "properties": {
                                    "deployments": {
                                        "type": "array",
                                        "items": _ref("DeploymentReport"),
                                    },
                                    "draining": {
                                        "type": "boolean",
                                        "description": "it received SIGTERM: no new work",
                                    },
                                },
                            }
                        }
                    },
                },
                "responses": {
                    "200": _json(_ref("HeartbeatAnswer"), "what to start, cancel and forget"),
                    "404": _json(_ref("Error"), "unknown task manager: register again"),
                    **ERRORS,
                },
            }
        },
        "/api/v1/taskmanagers/{tm_id}": {
            "delete": {
                "summary": "A task manager leaves (it drained): its jobs fail over at once",
                "parameters": [
                    {"name": "tm_id", "in": "path", "required": True, "schema": {"type": "string"}}
                ],
                "responses": {
                    "200": {"description": "it is forgotten"},
                    "404": _json(_ref("Error"), "unknown task manager"),
                    **ERRORS,
                },
            }
        },
        "/": {
            "get": {
                "summary": "Redirects to the dashboard",
                "security": [],
                "responses": {"302": {"description": "to /dashboard/"}},
            }
        },
        "/dashboard/": {
            "get": {
                "summary": "The web dashboard (static; it asks for the token)",
                "security": [],
                "responses": {"200": {"description": "HTML", "content": {"text/html": {}}}},
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics",
                "responses": {"200": {"description": "text exposition format"}, **ERRORS},
            }
        },
    },
    "components": {
        "securitySchemes": {"token": {"type": "http", "scheme": "bearer"}},
        "schemas": {
            "Error": {"type": "object", "properties": {"error": {"type": "string"}}},
            "Submission": {
                "type": "object",
                "required": ["artifact"],
                "properties": {
                    "artifact": {
                        "type": "object",
                        "required": ["kind"],
                        "properties": {
                            "kind": {"enum": ["module", "file", "archive"]},
                            "module": {"type": "string"},
                            "file_name": {"type": "string"},
                            "entry": {"type": "string", "description": "archive's job module"},
                            "args": {
                                "type": "array",
                                "items": {"type": "string"},
                                "description": "the job module's sys.argv[1:] while it loads",
                            },
                        },
                    },
                    "data_b64": {"type": "string", "description": "the file, base64"},
                    "parallelism": {"type": "integer", "minimum": 1},
                    "config": {"type": "object", "description": "configuration keys"},
                    "restore_from": {
                        "type": ["string", "null"],
                        "description": "a savepoint or retained checkpoint (its directory or "
                        "_metadata) the job starts from, also at another parallelism",
                    },
                },
            },
            "JobSummary": {
                "type": "object",
                "properties": {
                    "id": {"type": "string"},
                    "name": {"type": "string"},
                    "status": {
                        "enum": [
                            "CREATED",
                            "DEPLOYING",
                            "RUNNING",
                            "RESTARTING",
                            "RECOVERING",
                            "CANCELLING",
                            "CANCELED",
                            "FINISHED",
                            "FAILED",
                        ]
                    },
                    "parallelism": {"type": "integer"},
                    "task_managers": {"type": "array", "items": {"type": "string"}},
                    "latest_checkpoint": {"type": ["integer", "null"]},
                    "endpoints": {"type": "array", "items": {"type": "string"}},
                    "failovers": {"type": "integer"},
                    "per_task_manager": {
                        "type": "boolean",
                        "description": "an instance on every matching task manager",
                    },
                    "label": {"type": "string", "description": "task managers it runs on"},
                },
            },
            "JobStatus": {
                "allOf": [_ref("JobSummary")],
                "properties": {
                    "error": {"type": ["string", "null"]},
                    "metrics": {"type": "object"},
                    "attempt": {"type": "integer"},
                    "submitted_ms": {"type": "integer"},
                    "config": {"type": "object"},
                    "instances": {
                        "type": "array",
                        "items": _ref("Instance"),
                        "description": "a per-task-manager job's instances",
                    },
                },
            },
            "Instance": {
                "type": "object",
                "properties": {
                    "task_manager": {"type": "string"},
                    "deployment_id": {"type": "string"},
                    "status": {"enum": ["STARTING", "RUNNING", "FINISHED", "FAILED", "CANCELED"]},
                    "endpoints": {"type": "array", "items": {"type": "string"}},
                    "error": {"type": ["string", "null"]},
                },
            },
            "Checkpoints": {
                "type": "object",
                "properties": {
                    "job_id": {"type": "string"},
                    "directory": {"type": "string"},
                    "checkpoint_ids": {"type": "array", "items": {"type": "integer"}},
                    "latest": {"type": ["object", "null"]},
                },
            },
            "SavepointRequest": {
                "type": "object",
                "properties": {
                    "url": {
                        "type": "string",
                        "description": "a new or empty directory (fsspec URL); default "
                        "<checkpoint.dir>/savepoints/<job>/savepoint-<id>-<random>",
                    },
                    "format": {"enum": ["native", "canonical"], "default": "native"},
                },
            },
            "StopRequest": {
                "type": "object",
                "properties": {
                    "savepoint_url": {"type": "string", "description": "as url in a savepoint"},
                    "format": {"enum": ["native", "canonical"], "default": "native"},
                },
            },
            "Savepoint": {
                "type": "object",
                "properties": {
                    "job_id": {"type": "string"},
                    "path": {"type": "string", "description": "the savepoint's directory"},
                    "format": {"enum": ["native", "canonical"]},
                    "timestamp_ms": {"type": "integer"},
                    "stop": {"type": "boolean", "description": "it stopped the job"},
                },
            },
            "Savepoints": {
                "type": "object",
                "properties": {
                    "job_id": {"type": "string"},
                    "savepoints": {"type": "array", "items": _ref("Savepoint")},
                },
            },
            "Endpoints": {
                "type": "object",
                "properties": {"endpoints": {"type": "array", "items": {"type": "string"}}},
            },
            "Registration": {
                "type": "object",
                "required": ["id", "host", "slots", "exchange_address"],
                "properties": {
                    "id": {"type": "string"},
                    "host": {"type": "string"},
                    "slots": {"type": "integer"},
                    "exchange_address": {"type": "string", "description": "host:port for data"},
                    "metrics_url": {"type": "string"},
                    "labels": {
                        "type": "array",
                        "items": {"type": "string"},
                        "description": "what placement.taskmanager-label selects",
                    },
                    "draining": {"type": "boolean"},
                    "deployments": {"type": "array", "items": _ref("DeploymentReport")},
                },
            },
            "DeploymentReport": {
                "type": "object",
                "required": ["deployment_id", "job_id", "status"],
                "properties": {
                    "deployment_id": {"type": "string"},
                    "job_id": {"type": "string"},
                    "status": {"enum": ["STARTING", "RUNNING", "FINISHED", "FAILED", "CANCELED"]},
                    "error": {"type": ["string", "null"]},
                    "metrics": {"type": "object"},
                    "endpoints": {"type": "array", "items": {"type": "string"}},
                    "savepoints": {
                        "type": "object",
                        "description": "request id -> {path} or {error}: savepoint outcomes",
                    },
                },
            },
            "HeartbeatAnswer": {
                "type": "object",
                "properties": {
                    "deploy": {"type": "array", "items": {"type": "object"}},
                    "cancel": {"type": "array", "items": {"type": "string"}},
                    "abort": {"type": "array", "items": {"type": "string"}},
                    "release": {"type": "array", "items": {"type": "string"}},
                    "endpoints": {"type": "object", "description": "job name -> host:port list"},
                    "savepoints": {
                        "type": "array",
                        "items": {"type": "object"},
                        "description": "savepoint requests for the deployments this task manager "
                        "leads (request_id, deployment_id, url, format, stop), until reported",
                    },
                },
            },
        },
    },
}
