#!/usr/bin/env bash
# End-to-end check on a kind cluster, for machines with Docker (CI here has none):
#
#   1. creates a kind cluster;
#   2. installs SPIRE with the SPIRE Helm chart (spiffe/helm-charts-hardened): admin socket on the host,
#      the driver's SPIFFE ID in authorizedDelegates;
#   3. builds the driver image from the repository's Dockerfile and loads it into the cluster;
#   4. installs charts/spire-csi-driver, with the ClusterSPIFFEID that registers the driver;
#   5. deploys examples/envoy (two Envoy pods doing mutual TLS with SPIFFE ID matching) with 2-minute SVIDs;
#   6. checks a request goes through, waits for the frontend's SVID to rotate, checks Envoy picked up the new
#      certificate and requests still go through.
#
# Usage: e2e/kind/run.sh
# Environment: CLUSTER (default spire-csi-e2e), KEEP_CLUSTER=1 to leave the cluster running,
#   SPIRE_CHART_VERSION (default: the newest), KIND_NODE_IMAGE (default: kind's), IMAGE (default
#   spire-csi-driver:e2e).
# Needs: docker, kind, kubectl, helm (v3), and network access to the chart repository and image registries.
set -euo pipefail

cd "$(dirname "$0")/../.."

CLUSTER=${CLUSTER:-spire-csi-e2e}
IMAGE=${IMAGE:-spire-csi-driver:e2e}
TRUST_DOMAIN=example.org
SPIRE_REPO=https://spiffe.github.io/helm-charts-hardened/
DRIVER_NAMESPACE=spire-csi-driver
# The chart's default SPIFFE ID template, for release "spire-csi-driver" in namespace spire-csi-driver.
DRIVER_ID="spiffe://$TRUST_DOMAIN/ns/$DRIVER_NAMESPACE/sa/spire-csi-driver"

log() { printf '\n== %s\n' "$*"; }
die() {
  printf 'e2e/kind/run.sh: FAILED: %s\n' "$*" >&2
  exit 1
}

for tool in docker kind kubectl helm; do
  command -v "$tool" >/dev/null || die "$tool is not installed"
done

work=$(mktemp -d)
cleanup() {
  rm -rf "$work"
  if [[ ${KEEP_CLUSTER:-0} == 1 ]]; then
    echo "cluster $CLUSTER kept (kind delete cluster --name $CLUSTER)"
  else
    kind delete cluster --name "$CLUSTER" >/dev/null 2>&1 || true
  fi
}
trap cleanup EXIT

diagnose() {
  kubectl get pods -A -o wide || true
  kubectl -n "$DRIVER_NAMESPACE" logs daemonset/spire-csi-driver -c driver --tail=50 || true
  kubectl describe pod envoy-frontend envoy-backend | sed -n '/^Events:/,$p' || true
}

log "kind cluster $CLUSTER"
kind create cluster --name "$CLUSTER" ${KIND_NODE_IMAGE:+--image "$KIND_NODE_IMAGE"} --wait 120s

log "SPIRE (spiffe/helm-charts-hardened) with the admin socket on the host"
cat >"$work/spire-values.yaml" <<EOF
global:
  spire:
    clusterName: $CLUSTER
    trustDomain: $TRUST_DOMAIN
spire-server:
  controllerManager:
    # The example ClusterSPIFFEIDs name the class of a release "spire" in namespace "spire-server".
    watchClassless: true
spire-agent:
  sockets:
    admin:
      enabled: true
      mountOnHost: true
  authorizedDelegates:
    - $DRIVER_ID
EOF
version_args=()
[[ -n ${SPIRE_CHART_VERSION:-} ]] && version_args=(--version "$SPIRE_CHART_VERSION")
helm upgrade --install spire-crds spire-crds --repo "$SPIRE_REPO" "${version_args[@]}" \
  --namespace spire-server --create-namespace --wait
helm upgrade --install spire spire --repo "$SPIRE_REPO" "${version_args[@]}" \
  --namespace spire-server --values "$work/spire-values.yaml" --wait --timeout 10m

log "driver image $IMAGE"
docker build --tag "$IMAGE" .
kind load docker-image "$IMAGE" --name "$CLUSTER"

log "charts/spire-csi-driver"
helm upgrade --install spire-csi-driver charts/spire-csi-driver \
  --namespace "$DRIVER_NAMESPACE" --create-namespace \
  --set image.repository="${IMAGE%:*}" --set image.tag="${IMAGE##*:}" --set image.pullPolicy=Never \
  --set clusterSPIFFEID.enabled=true --set driver.logLevel=debug \
  --wait --timeout 5m
node=$(kubectl get nodes -o jsonpath='{.items[0].metadata.name}')
for _ in $(seq 60); do
  kubectl get csinode "$node" -o jsonpath='{.spec.drivers[*].name}' | grep -qw csi.spire.io && break
  sleep 2
done
kubectl get csinode "$node" -o jsonpath='{.spec.drivers[*].name}' | grep -qw csi.spire.io ||
  { diagnose; die "csi.spire.io did not register with kubelet on $node"; }

log "examples/envoy with 2-minute SVIDs"
cp -r examples/envoy "$work/envoy"
sed -i 's/^  # ttl: 5m$/  ttl: 2m/' "$work/envoy/workloads.yaml"
grep -q '^  ttl: 2m$' "$work/envoy/workloads.yaml" || die 'could not set the example ttl'
kubectl apply -k "$work/envoy"
kubectl wait --for=condition=Ready pod/envoy-frontend pod/envoy-backend --timeout=5m ||
  { diagnose; die 'the Envoy pods did not become ready'; }

request() {
  kubectl exec envoy-frontend -c client -- curl -sS --max-time 10 http://127.0.0.1:8080/
}
# The serial number of the frontend's own SVID as Envoy uses it (admin API /certs).
serial() {
  kubectl exec envoy-frontend -c client -- curl -sS --max-time 10 http://127.0.0.1:9901/certs |
    tr -d ' \n' | sed -n 's/.*"cert_chain":\[{[^]]*"serial_number":"\([0-9a-fA-F]*\)".*/\1/p'
}

log "mutual TLS through both Envoys"
for _ in $(seq 30); do
  reply=$(request 2>/dev/null || true)
  [[ $reply == *"hello from envoy-backend"* ]] && break
  sleep 2
done
[[ $reply == *"hello from envoy-backend"* ]] || { diagnose; die "no answer through the Envoys: $reply"; }
echo "$reply"

log "rotation"
first=$(serial)
[[ -n $first ]] || { diagnose; die "Envoy's /certs shows no SVID"; }
echo "serial in use: $first"
rotated=""
for _ in $(seq 60); do
  sleep 5
  current=$(serial)
  if [[ -n $current && $current != "$first" ]]; then
    rotated=$current
    break
  fi
done
[[ -n $rotated ]] || { diagnose; die "Envoy still uses serial $first after 5 minutes"; }
echo "rotated to serial: $rotated"
reply=$(request) || { diagnose; die 'request failed after the rotation'; }
[[ $reply == *"hello from envoy-backend"* ]] || { diagnose; die "unexpected answer after the rotation: $reply"; }

log "passed"
