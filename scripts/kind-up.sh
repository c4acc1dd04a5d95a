#!/usr/bin/env bash
# Cambrian on a laptop: a kind cluster with the three images built from this checkout, Prometheus,
# Grafana, the Cambrian chart and the plain example (manifests/examples/quickstart/: CPU training,
# no Kueue, no GPU), applied in the release namespace, where the chart's NetworkPolicy isolates
# its training pods.
#
#   scripts/kind-up.sh [--dry-run] [--name NAME] [--engine docker|podman] [--gpu]
#
#   --dry-run   print every command, in order, instead of running it (needs none of the tools)
#   --name      kind cluster name (default: cambrian); kubectl and helm use context kind-NAME only
#   --engine    container engine (default: docker when installed, else podman)
#   --gpu       build the trainer with CUDA torch (needs kind nodes that can see a GPU, which this
#               script does not set up). Default: images/Dockerfile.trainer with CPU torch.
#
# Exit codes: 0 done; 2 bad argument; 6 a prerequisite is missing (Docker or Podman absent or not
# running, kind, kubectl or helm not on PATH, a repository file missing), one line says which;
# anything else: the exit code of the step that failed, whose own output is shown above it.
# Remove everything with scripts/kind-down.sh.
set -euo pipefail
ME=kind-up
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=SCRIPTDIR/kind-common.sh
source "$ROOT/scripts/kind-common.sh"

GPU=0
extra_arg() { case $1 in --gpu) GPU=1 ;; *) return 1 ;; esac; }
parse_args "$@"

# What is built and loaded: exactly the images manifests/kind/values.yaml makes the chart use
# (tests/chart/test_kind.py compares this list with `helm template -f manifests/kind/values.yaml`).
TAG=kind
OPERATOR_IMAGE=localhost/cambrian-operator:$TAG
TRAINER_IMAGE=localhost/cambrian-trainer:$TAG
SERVING_IMAGE=localhost/cambrian-serving:$TAG
CPU_TORCH_INDEX=https://download.pytorch.org/whl/cpu

CONFIG=manifests/kind/cluster.yaml
VALUES=manifests/kind/values.yaml
PROMETHEUS=manifests/kind/prometheus.yaml
GRAFANA=manifests/kind/grafana.yaml
EXAMPLE=manifests/examples/quickstart/
CONTEXT=kind-$CLUSTER
NS=cambrian           # the chart's namespace and release name (manifests/prometheus/prometheus.yml assumes both)
MON=monitoring        # Prometheus and Grafana, and the dashboards' ConfigMaps (values: dashboards.namespace)
CRDS=(crd/evolutions.cambrian.dev crd/hypotheses.cambrian.dev crd/rollouts.cambrian.dev)
K=(kubectl --context "$CONTEXT")

cd "$ROOT"   # every path above is relative to the repository root, as the docker build context is
ENGINE=$(pick_engine "$ENGINE")

if [[ $DRY_RUN == 0 ]]; then
  # Everything is checked before the first slow step, so a missing piece costs seconds, not a build.
  require_engine "$ENGINE"
  require_kind
  require_tool kubectl "install it (https://kubernetes.io/docs/tasks/tools/)"
  require_tool helm "install Helm 3 (https://helm.sh/docs/intro/install/)"
  for f in images/Dockerfile.operator images/Dockerfile.serving images/Dockerfile.trainer \
           charts/cambrian/Chart.yaml manifests/prometheus/prometheus.yml manifests/prometheus/cambrian-rules.yaml \
           "$CONFIG" "$VALUES" "$PROMETHEUS" "$GRAFANA" "$EXAMPLE"; do
    [[ -e $f ]] || die "$EXIT_MISSING" "$f is missing from this checkout ($ROOT)"
  done
  if [[ $GPU == 0 ]] && command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then
    echo "$ME: a GPU is present; the trainer image is the CPU build anyway (see --gpu)" >&2
  fi
fi

use_engine "$ENGINE"
say "1/6 kind cluster '$CLUSTER' from $CONFIG"
existing=""
[[ $DRY_RUN == 1 ]] || existing=$(kind get clusters 2>/dev/null || true)
if grep -qx -- "$CLUSTER" <<<"$existing"; then
  echo "$ME: kind cluster '$CLUSTER' exists; reusing it" >&2
else
  run kind create cluster --name "$CLUSTER" --config "$CONFIG" --wait 180s
fi

say "2/6 images: $OPERATOR_IMAGE $SERVING_IMAGE $TRAINER_IMAGE"
if [[ $ENGINE == docker ]]; then run export DOCKER_BUILDKIT=1; fi   # Dockerfile.trainer uses RUN --mount
run "$ENGINE" build -f images/Dockerfile.operator -t "$OPERATOR_IMAGE" .
run "$ENGINE" build -f images/Dockerfile.serving --build-arg TORCH_INDEX_URL="$CPU_TORCH_INDEX" -t "$SERVING_IMAGE" .
# Each image installs only its own extra (the trainer's has the data and scoring libraries serving lacks);
# without --gpu the trainer's torch is the CPU build.
if [[ $GPU == 1 ]]; then
  run "$ENGINE" build -f images/Dockerfile.trainer -t "$TRAINER_IMAGE" .
else
  run "$ENGINE" build -f images/Dockerfile.trainer --build-arg TORCH_INDEX_URL="$CPU_TORCH_INDEX" -t "$TRAINER_IMAGE" .
fi

say "3/6 load the images into the kind nodes"
IMAGES=("$OPERATOR_IMAGE" "$SERVING_IMAGE" "$TRAINER_IMAGE")
if [[ $ENGINE == docker ]]; then
  run kind load docker-image --name "$CLUSTER" "${IMAGES[@]}"
else
  # `kind load docker-image` calls the docker CLI; with Podman the images travel as an archive.
  ARCHIVE="${TMPDIR:-/tmp}/cambrian-kind-$CLUSTER-images.tar"
  run podman save --format docker-archive --multi-image-archive -o "$ARCHIVE" "${IMAGES[@]}"
  run kind load image-archive --name "$CLUSTER" "$ARCHIVE"
  run rm -f "$ARCHIVE"
fi

say "4/6 Prometheus in namespace $MON (config and alert rules from manifests/prometheus/)"
run "${K[@]}" apply -f "$PROMETHEUS"
# The ConfigMap from the repository's files; create-as-YAML piped into apply, so a rerun updates it.
CONFIGMAP=("${K[@]}" -n "$MON" create configmap prometheus-config --from-file=manifests/prometheus/prometheus.yml
           --from-file=manifests/prometheus/cambrian-rules.yaml --dry-run=client -o yaml)
if [[ $DRY_RUN == 1 ]]; then
  echo "$(print_cmd "${CONFIGMAP[@]}") | $(print_cmd "${K[@]}" apply -f -)"
else
  "${CONFIGMAP[@]}" | "${K[@]}" apply -f -
fi
run "${K[@]}" -n "$MON" rollout status deployment/prometheus --timeout=300s

say "5/6 the Cambrian chart (release $NS in namespace $NS) with $VALUES, then Grafana"
run helm --kube-context "$CONTEXT" upgrade --install "$NS" charts/cambrian --namespace "$NS" --create-namespace \
  --values "$VALUES" --wait --timeout 10m
run "${K[@]}" wait --for=condition=Established "${CRDS[@]}" --timeout=60s
run "${K[@]}" apply -f "$GRAFANA"
run "${K[@]}" -n "$MON" rollout status deployment/grafana --timeout=300s

say "6/6 the plain example ($EXAMPLE) in namespace $NS"
run "${K[@]}" apply -n "$NS" -f "$EXAMPLE"

DOWN="scripts/kind-down.sh"; [[ $CLUSTER == "$KIND_DEFAULT_CLUSTER" ]] || DOWN+=" --name $CLUSTER"
# The listing of a dry run stays a valid shell script: the guide comes out as comments.
guide() { if [[ $DRY_RUN == 1 ]]; then sed 's/^/# /'; else cat; fi; }
guide <<MSG

Cambrian is running on kind cluster '$CLUSTER' (kubectl context $CONTEXT).
Watch the loop (Evolutions, Hypotheses, Rollouts):
  kubectl --context $CONTEXT -n $NS get evo,hyp,ro -w
Training Jobs, serving arms and routers:
  kubectl --context $CONTEXT -n $NS get jobs,deployments,pods
Operator log:
  kubectl --context $CONTEXT -n $NS logs deployment/$NS-operator -f
Dashboards (Grafana; the chart's dashboards are in folder Cambrian; anonymous read-only, admin/admin to edit):
  kubectl --context $CONTEXT -n $MON port-forward service/grafana 3000:3000   # then open http://localhost:3000
Prometheus (Cambrian's alert rules under Alerts):
  kubectl --context $CONTEXT -n $MON port-forward service/prometheus 9090:9090  # then open http://localhost:9090
Remove the cluster and everything in it:
  $DOWN
MSG
