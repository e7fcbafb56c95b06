#!/usr/bin/env bash
# The remote-compaction example end to end on Kubernetes (docs/kubernetes.md):
#
#   1. deploy k8s/ (`kubectl apply -k`): the compactor cluster, the streamlet cluster and, through
#      the demo component, an S3-compatible store and a Kafka broker;
#   2. wait until the store's bucket exists, both job managers are ready and the task managers run;
#   3. forward the two job managers' REST ports to this machine and read their tokens from the
#      Secrets;
#   4. submit_compaction_example.sh: the compaction_service job, once, in the per-task-manager
#      mode (an instance on every compactor task manager, also on pods added later), then the
#      example job with compaction.service.address=dns:///streamlet-compaction:50051 (the
#      headless Service), until the job reports remote compactions;
#   5. show the log lines that prove it: `invokeCompactionService` on the job's task managers,
#      `perform compaction on compaction-service side` on the compactor's.
#
# Needs kubectl (with access to a cluster that can pull the streamlet image, see the Dockerfile)
# and the streamlet command on this machine (`pip install .` in the repository), which talks to the
# job managers through the port-forwards. Settings (environment): NAMESPACE (streamlet),
# COMPACTOR_PORT and STREAMLET_PORT (local ports of the forwards: 18081, 18082), DEPLOY (1; 0 skips
# step 1), TIMEOUT (kubectl waits: 300s), and those of submit_compaction_example.sh.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
NAMESPACE=${NAMESPACE:-streamlet}
COMPACTOR_PORT=${COMPACTOR_PORT:-18081}
STREAMLET_PORT=${STREAMLET_PORT:-18082}
DEPLOY=${DEPLOY:-1}
TIMEOUT=${TIMEOUT:-300s}
kc=(kubectl --namespace "$NAMESPACE")
compactor_tms=app.kubernetes.io/instance=compactor,app.kubernetes.io/component=taskmanager
streamlet_tms=app.kubernetes.io/instance=streamlet,app.kubernetes.io/component=taskmanager

if [[ "$DEPLOY" == 1 ]]; then
    echo "== deploying $here/.. into namespace $NAMESPACE"
    kubectl apply -k "$here/.."
fi

echo "== waiting for the deployments"
if "${kc[@]}" get job streamlet-s3-create-bucket > /dev/null 2>&1; then
    "${kc[@]}" wait --for=condition=complete job/streamlet-s3-create-bucket --timeout="$TIMEOUT"
fi
for deployment in compactor-jobmanager streamlet-jobmanager streamlet-taskmanager; do
    "${kc[@]}" rollout status "deployment/$deployment" --timeout="$TIMEOUT"
done
# The compactor task managers become ready only once a compaction service serves in them.
"${kc[@]}" wait --for=jsonpath='{.status.phase}'=Running pod --selector "$compactor_tms" \
    --timeout="$TIMEOUT"

echo "== forwarding the job managers' REST ports to localhost:$COMPACTOR_PORT and :$STREAMLET_PORT"
forwards=()
cleanup() {
    for pid in "${forwards[@]}"; do
        kill "$pid" 2> /dev/null || true
    done
}
trap cleanup EXIT
"${kc[@]}" port-forward service/compactor-jobmanager "$COMPACTOR_PORT:8081" > /dev/null &
forwards+=($!)
"${kc[@]}" port-forward service/streamlet-jobmanager "$STREAMLET_PORT:8081" > /dev/null &
forwards+=($!)
for port in "$COMPACTOR_PORT" "$STREAMLET_PORT"; do
    for _ in $(seq 1 50); do
        if (: < "/dev/tcp/127.0.0.1/$port") 2> /dev/null; then
            break
        fi
        sleep 0.2
    done
done

secret() {
    "${kc[@]}" get secret "$1" --output jsonpath='{.data.token}' | base64 --decode
}
COMPACTOR_JOBMANAGER=http://127.0.0.1:$COMPACTOR_PORT
STREAMLET_JOBMANAGER=http://127.0.0.1:$STREAMLET_PORT
COMPACTOR_TOKEN=$(secret compactor-cluster-token)
STREAMLET_TOKEN=$(secret streamlet-cluster-token)
COMPACTORS=${COMPACTORS:-$("${kc[@]}" get deployment compactor-taskmanager --output jsonpath='{.spec.replicas}')}
export COMPACTOR_JOBMANAGER STREAMLET_JOBMANAGER COMPACTOR_TOKEN STREAMLET_TOKEN COMPACTORS

"$here/submit_compaction_example.sh"

echo "== the compaction endpoint: every ready compactor pod behind the headless Service"
"${kc[@]}" wait --for=condition=ready pod --selector "$compactor_tms" --timeout="$TIMEOUT"
"${kc[@]}" get endpointslices --selector kubernetes.io/service-name=streamlet-compaction

echo "== the job's task managers offload their compactions (invokeCompactionService):"
"${kc[@]}" logs --selector "$streamlet_tms" --prefix --tail=-1 \
    | grep invokeCompactionService | tail -n 5
echo "== the compaction service runs them (perform compaction on compaction-service side):"
"${kc[@]}" logs --selector "$compactor_tms" --prefix --tail=-1 \
    | grep 'perform compaction on compaction-service side' | tail -n 5
echo "== done: watch with \`streamlet list --jobmanager $STREAMLET_JOBMANAGER\` while this runs, or"
echo "   \`kubectl -n $NAMESPACE port-forward service/streamlet-jobmanager 8081\` and open"
echo "   http://127.0.0.1:8081/dashboard/#token=<the streamlet cluster token>"
