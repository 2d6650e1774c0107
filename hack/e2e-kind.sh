#!/usr/bin/env bash
# End to end on kind, with real images and real serving pods (needs Docker, kind, kubectl, helm).
# The same walk-through as `make demo`, but the model is served inside the cluster:
#   images -> kind -> helm install -> model on the node -> ModelDeployment with a canary
#   -> Ready -> kubectl patch traffic -> a v2 inference through the Service.
# Then, with E2E_RUN_TESTS=1, the integration tests run against the same cluster.
set -euo pipefail
cd "$(dirname "$0")/.."

cluster=${KIND_CLUSTER:-modeldeploy}
namespace=${E2E_NAMESPACE:-default}
python=${PYTHON:-.venv/bin/python}
for tool in docker kind kubectl helm; do
  command -v "$tool" >/dev/null || { echo "e2e-kind: '$tool' is required on PATH" >&2; exit 2; }
done
docker info >/dev/null 2>&1 || { echo "e2e-kind: no Docker engine answers ('docker info' failed)" >&2; exit 2; }

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

step "kind cluster '$cluster'"
kind get clusters | grep -qx "$cluster" || kind create cluster --name "$cluster" --wait 180s
kubectl config use-context "kind-$cluster"

step "building and loading the images"
docker build -f Dockerfile.server --build-arg VARIANT=cpu -t modeldeploy-server:e2e-cpu .
docker build -f Dockerfile.operator -t modeldeploy-operator:e2e .
kind load docker-image modeldeploy-server:e2e-cpu modeldeploy-operator:e2e --name "$cluster"

step "putting two tiny models on the node's /models"
models=$(mktemp -d)
trap 'rm -rf "$models"' EXIT
"$python" examples/make_tiny_model.py "$models/sentiment/v1/model.onnx" --seed 0 >"$models/request.json"
"$python" examples/make_tiny_model.py "$models/sentiment/v2/model.onnx" --seed 1 >/dev/null
for node in $(kind get nodes --name "$cluster"); do
  docker exec "$node" mkdir -p /models
  docker cp "$models/sentiment" "$node:/models/"
  docker exec "$node" chmod -R a+rX /models
done

step "helm install (CRD, operator, least-privilege RBAC)"
if ! kubectl get crd virtualservices.networking.istio.io >/dev/null 2>&1; then
  # Istio's own CRDs (from its pinned Go module): routing objects validated by their real schemas,
  # without Istio's control plane.
  kubectl apply --server-side -f "$("$python" hack/routing_crds.py istio)"
fi
helm upgrade --install modeldeploy charts/modeldeploy -n modeldeploy-system --create-namespace \
  --set image.repository=modeldeploy-operator --set image.tag=e2e --set image.pullPolicy=Never \
  --set serverImage.cpu=modeldeploy-server:e2e-cpu --set serverImage.pullPolicy=Never --wait --timeout 180s

step "the claim and the ModelDeployment"
kubectl apply -f - <<YAML
apiVersion: v1
kind: PersistentVolume
metadata: {name: e2e-models}
spec:
  capacity: {storage: 1Gi}
  accessModes: [ReadWriteOnce, ReadOnlyMany]
  persistentVolumeReclaimPolicy: Retain
  storageClassName: standard   # kind's default class, so the example claim binds to this volume
  hostPath: {path: /models, type: Directory}
YAML
kubectl apply -n "$namespace" -f examples/pvc.yaml -f examples/modeldeployment-canary.yaml
kubectl wait -n "$namespace" md/sentiment --for=condition=Ready --timeout=300s
kubectl get -n "$namespace" md sentiment

step "moving 30% of the traffic to the canary"
kubectl patch -n "$namespace" md sentiment --type merge -p '{"spec":{"canary":{"trafficPercent":30}}}'
kubectl wait -n "$namespace" md/sentiment --for=jsonpath='{.status.traffic.canary}'=30 --timeout=60s
kubectl get -n "$namespace" md sentiment

step "a v2 inference through the Service"
kubectl port-forward -n "$namespace" svc/sentiment 18080:80 >/dev/null &
forward=$!
trap 'kill $forward 2>/dev/null; rm -rf "$models"' EXIT
for _ in $(seq 50); do curl -sf http://127.0.0.1:18080/v2/health/ready >/dev/null && break; sleep 0.2; done
curl -sf -H 'Content-Type: application/json' -d @"$models/request.json" \
  http://127.0.0.1:18080/v2/models/sentiment/infer
echo

if [ "${E2E_RUN_TESTS:-0}" = 1 ]; then
  step "integration tests against kind"
  USE_EXISTING_CLUSTER=1 KUBECONFIG=${KUBECONFIG:-$HOME/.kube/config} make integration
fi
step "done; delete with: kind delete cluster --name $cluster"
