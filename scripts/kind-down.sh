#!/usr/bin/env bash
# Removes the kind cluster of scripts/kind-up.sh and everything in it (Cambrian, Prometheus,
# Grafana, the example's objects). The images stay in Docker/Podman; remove them with
#   docker image rm localhost/cambrian-operator:kind localhost/cambrian-serving:kind localhost/cambrian-trainer:kind
#
#   scripts/kind-down.sh [--dry-run] [--name NAME] [--engine docker|podman]
#
# Exit codes: 0 removed (or there was no such cluster); 2 bad argument; 6 kind, or the container
# engine kind runs on, is missing; anything else: kind's own exit code.
set -euo pipefail
ME=kind-down
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=SCRIPTDIR/kind-common.sh
source "$ROOT/scripts/kind-common.sh"

parse_args "$@"
ENGINE=$(pick_engine "$ENGINE")
if [[ $DRY_RUN == 0 ]]; then
  require_engine "$ENGINE"
  require_kind
fi
use_engine "$ENGINE"
say "delete kind cluster '$CLUSTER' (kubectl context kind-$CLUSTER)"
run kind delete cluster --name "$CLUSTER"
