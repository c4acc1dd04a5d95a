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

CLUSTER=$KIND_DEFAULT_CLUSTER
ENGINE=""
while (( $# )); do
  case $1 in
    --dry-run) DRY_RUN=1 ;;
    --name) (( $# >= 2 )) || usage_error "--name needs a value"; CLUSTER=$2; shift ;;
    --name=*) CLUSTER=${1#--name=} ;;
    --engine) (( $# >= 2 )) || usage_error "--engine needs a value"; ENGINE=$2; shift ;;
    --engine=*) ENGINE=${1#--engine=} ;;
    -h|--help) print_help "$0"; exit 0 ;;
    *) usage_error "unknown argument '$1'" ;;
  esac
  shift
done
check_cluster_name "$CLUSTER"
ENGINE=$(pick_engine "$ENGINE")
if [[ $DRY_RUN == 0 ]]; then
  require_engine "$ENGINE"
  require_kind
fi
use_engine "$ENGINE"
say "delete kind cluster '$CLUSTER' (kubectl context kind-$CLUSTER)"
run kind delete cluster --name "$CLUSTER"
