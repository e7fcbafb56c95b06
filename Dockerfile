# The streamlet image: the runtime, the job manager and task managers, the compaction service and
# the example jobs, installed into the system Python of python:3.11-slim, run as a non-root user.
#
#   docker build -t streamlet:0.1.0 .
#   docker run --rm streamlet:0.1.0 --help
#
# The Kubernetes manifests in k8s/ refer to the image as `streamlet`; k8s/kustomization.yaml's
# `images:` entry sets the name and tag actually deployed (see docs/kubernetes.md).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# A fixed numeric uid/gid, so that Kubernetes' runAsNonRoot can verify the user.
RUN groupadd --system --gid 10001 streamlet \
    && useradd --system --uid 10001 --gid streamlet --home-dir /home/streamlet --create-home \
        --shell /usr/sbin/nologin streamlet

WORKDIR /opt/streamlet/src
COPY pyproject.toml README.md ./
COPY streamlet ./streamlet
COPY statebackend ./statebackend
COPY compaction_service ./compaction_service
COPY jobs ./jobs
COPY benchmarks ./benchmarks
# Every dependency is pinned in pyproject.toml; the import check fails the build on a broken install.
RUN pip install . \
    && python -c "import streamlet.cli, streamlet.cluster.commands, compaction_service.job, jobs.paper_job" \
    && streamlet --help > /dev/null \
    && rm -rf /opt/streamlet/src

USER 10001:10001
WORKDIR /home/streamlet
# Job managers (REST, dashboard, /metrics) and the compaction service (gRPC).
EXPOSE 8081 50051
ENTRYPOINT ["streamlet"]
CMD ["--help"]
