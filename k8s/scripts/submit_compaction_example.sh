#!/usr/bin/env bash
# The submit steps of the remote-compaction example, against any two streamlet job managers:
#
#   1. submit the `compaction_service` job to the compactor cluster once, in the per-task-manager
#      mode (placement.per-taskmanager=true): it runs an instance on every task manager labelled
#      COMPACTOR_LABEL, also on those that start later, each serving gRPC on COMPACTION_PORT of its
#      pod; skipped if the compactor cluster runs a compaction-service job already. Then wait
#      until it serves on COMPACTORS task managers (endpoints registered);
#   2. submit the example job (jobs.paper_job, the reference paper's job) to the streamlet cluster
#      with compaction.mode=remote and compaction.service.address=COMPACTION_ADDRESS;
#   3. wait until the job reports remote compactions (`streamlet status`: compactions_remote).
#
# run_compaction_example.sh runs this against a Kubernetes deployment (through port-forwards);
# tests/k8s runs it against the manifests' processes launched locally. Settings (environment):
#
#   COMPACTOR_JOBMANAGER, COMPACTOR_TOKEN  REST URL and token of the compactor cluster (required)
#   STREAMLET_JOBMANAGER, STREAMLET_TOKEN  REST URL and token of the streamlet cluster (required)
#   COMPACTORS           compactor task managers to wait for (1)
#   COMPACTOR_LABEL      the compactor task managers' label (compactor: their `--label`)
#   COMPACTION_PORT      port the service binds in its pod (50051, the headless Service's target)
#   COMPACTION_ADDRESS   the job's compaction.service.address (dns:///streamlet-compaction:50051)
#   COMPACTION_ROOTS     DFS roots the service may touch (s3://streamlet/streamlet/jobs: the
#                        streamlet cluster's jobs, below its cluster.dir)
#   COMPACTION_WORKERS   worker processes per service (2)
#   EXAMPLE_JOB          module or file to submit (jobs.paper_job); EXAMPLE_PARALLELISM (2)
#   EXAMPLE_STATE_OPTIONS  the job's state.options (small memtables: many compactions soon)
#   WAIT_SECONDS         how long each wait may take (300)
#   STREAMLET            the streamlet command (streamlet)
#
# Prints `compactor job ID serving at ENDPOINTS` (comma-separated), `example job ID`, and finally
# `example job ID: N remote compactions, M local`; exits non-zero if a step fails or times out.
set -euo pipefail

: "${COMPACTOR_JOBMANAGER:?set COMPACTOR_JOBMANAGER to the REST URL of the compactor cluster}"
: "${COMPACTOR_TOKEN:?set COMPACTOR_TOKEN to the token of the compactor cluster}"
: "${STREAMLET_JOBMANAGER:?set STREAMLET_JOBMANAGER to the REST URL of the streamlet cluster}"
: "${STREAMLET_TOKEN:?set STREAMLET_TOKEN to the token of the streamlet cluster}"
COMPACTORS=${COMPACTORS:-1}
COMPACTOR_LABEL=${COMPACTOR_LABEL:-compactor}
COMPACTION_PORT=${COMPACTION_PORT:-50051}
COMPACTION_ADDRESS=${COMPACTION_ADDRESS:-dns:///streamlet-compaction:50051}
COMPACTION_ROOTS=${COMPACTION_ROOTS:-s3://streamlet/streamlet/jobs}
COMPACTION_WORKERS=${COMPACTION_WORKERS:-2}
EXAMPLE_JOB=${EXAMPLE_JOB:-jobs.paper_job}
EXAMPLE_PARALLELISM=${EXAMPLE_PARALLELISM:-2}
if [[ -z "${EXAMPLE_STATE_OPTIONS:-}" ]]; then
    EXAMPLE_STATE_OPTIONS='{"lsm.memtable_bytes": 1048576, "lsm.l0_compaction_trigger": 3}'
fi
WAIT_SECONDS=${WAIT_SECONDS:-300}
STREAMLET=${STREAMLET:-streamlet}

# `on_compactor CMD ARGS...` / `on_streamlet CMD ARGS...`: a streamlet client command against one
# cluster (its token in the environment, never on a command line).
on_compactor() {
    STREAMLET_CLUSTER_TOKEN="$COMPACTOR_TOKEN" "$STREAMLET" "$1" --jobmanager "$COMPACTOR_JOBMANAGER" "${@:2}"
}
on_streamlet() {
    STREAMLET_CLUSTER_TOKEN="$STREAMLET_TOKEN" "$STREAMLET" "$1" --jobmanager "$STREAMLET_JOBMANAGER" "${@:2}"
}

# `wait_running ID`: wait until the compactor job runs and has registered COMPACTORS endpoints;
# print them.
wait_running() {
    local id=$1 deadline=$((SECONDS + WAIT_SECONDS)) line status endpoints count
    while true; do
        line=$(on_compactor list | awk -v id="$id" '$1 == id')
        status=$(awk '{print $3}' <<<"$line")
        endpoints=$(awk '{print $NF}' <<<"$line")
        count=$(tr ',' '\n' <<<"$endpoints" | grep -c ':' || true)
        if [[ "$status" == RUNNING ]] && ((count >= COMPACTORS)); then
            echo "$endpoints"
            return 0
        fi
        if [[ "$status" == FAILED || "$status" == CANCELED || "$status" == FINISHED ]]; then
            echo "compactor job $id is $status" >&2
            on_compactor status "$id" >&2 || true
            return 1
        fi
        if ((SECONDS >= deadline)); then
            echo "compactor job $id is not serving after ${WAIT_SECONDS}s: ${line:-not listed}" >&2
            return 1
        fi
        sleep 1
    done
}

# `metric JSON NAME`: an integer metric of a `streamlet status` answer (0 when absent).
metric() {
    local value
    value=$({ grep -Eo "\"$2\": [0-9]+" <<<"$1" || true; } | head -n 1 | awk '{print $2}')
    echo "${value:-0}"
}

compactor_job=$(on_compactor list | awk '$2 == "compaction-service" && $3 !~ /^(CANCELED|FAILED|FINISHED)$/ {print $1; exit}')
if [[ -n "$compactor_job" ]]; then
    echo "== the compactor cluster runs the compaction service already: job $compactor_job"
else
    echo "== submitting the compaction service to every '$COMPACTOR_LABEL' task manager of $COMPACTOR_JOBMANAGER"
    compactor_job=$(on_compactor submit compaction_service \
        -D "placement.per-taskmanager=true" \
        -D "placement.taskmanager-label=$COMPACTOR_LABEL" \
        -D "compaction.service.port=$COMPACTION_PORT" \
        -D "compaction.service.workers=$COMPACTION_WORKERS" \
        -D "compaction.service.allowed-roots=$COMPACTION_ROOTS")
fi
endpoints=$(wait_running "$compactor_job")  # exits (set -e) if it does not serve in time
echo "compactor job $compactor_job serving at $endpoints"

echo "== submitting $EXAMPLE_JOB to $STREAMLET_JOBMANAGER (compaction.service.address=$COMPACTION_ADDRESS)"
job=$(on_streamlet submit "$EXAMPLE_JOB" -p "$EXAMPLE_PARALLELISM" \
    -D "compaction.mode=remote" \
    -D "compaction.service.address=$COMPACTION_ADDRESS" \
    -D "state.options=$EXAMPLE_STATE_OPTIONS" \
    -D "checkpoint.interval=10s")
echo "example job $job"

deadline=$((SECONDS + WAIT_SECONDS))
while true; do
    answer=$(on_streamlet status "$job")
    remote=$(metric "$answer" compactions_remote)
    local_runs=$(metric "$answer" compactions_local)
    if ((remote > 0)); then
        echo "example job $job: $remote remote compactions, $local_runs local"
        exit 0
    fi
    if grep -Eq '"status": "(FAILED|CANCELED)"' <<<"$answer"; then
        echo "example job $job stopped before any remote compaction:" >&2
        echo "$answer" >&2
        exit 1
    fi
    if ((SECONDS >= deadline)); then
        echo "example job $job: no remote compaction after ${WAIT_SECONDS}s ($local_runs local):" >&2
        echo "$answer" >&2
        exit 1
    fi
    sleep 2
done
