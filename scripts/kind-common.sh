# shellcheck shell=bash disable=SC2034  # sourced: the variables are read by the scripts that source it
# Shared by scripts/kind-up.sh, scripts/kind-down.sh and scripts/build-kind-check.sh (sourced, not run).
# Pins, exit codes, the dry-run aware command runner and the prerequisite checks.

KIND_VERSION=v0.33.0             # the kind release the quick start is written and checked against
KIND_DEFAULT_CLUSTER=cambrian    # also `name:` in manifests/kind/cluster.yaml (a test keeps them equal)
EXIT_USAGE=2                     # a bad argument
EXIT_MISSING=6                   # a prerequisite is missing: container engine, kind, kubectl, helm, a repo file

DRY_RUN=0
ME=${ME:-kind}

say() {  # a step heading: a comment line in the dry-run listing, a log line on stderr otherwise
  if [[ $DRY_RUN == 1 ]]; then echo "# $*"; else echo "==> $*" >&2; fi
}

print_cmd() {  # the command, shell-quoted so that the dry-run listing can be pasted into a shell
  local out="" a
  for a in "$@"; do out+="${out:+ }$(printf '%q' "$a")"; done
  echo "$out"
}

run() {  # run "$@", or print it under --dry-run
  if [[ $DRY_RUN == 1 ]]; then print_cmd "$@"; else "$@"; fi
}

die() {  # die CODE MESSAGE: one line on stderr
  echo "$ME: $2" >&2
  exit "$1"
}

usage_error() { die "$EXIT_USAGE" "$1 (see $ME --help)"; }

# The container engine: --engine, else Docker when installed, else Podman. The dry run only names it.
pick_engine() {
  local wanted=$1
  if [[ -n $wanted ]]; then
    [[ $wanted == docker || $wanted == podman ]] || usage_error "--engine must be docker or podman, not '$wanted'"
    echo "$wanted"
  elif command -v docker >/dev/null; then echo docker
  elif command -v podman >/dev/null; then echo podman
  elif [[ $DRY_RUN == 1 ]]; then echo docker
  else die "$EXIT_MISSING" "no container engine found: install Docker (https://docs.docker.com/get-docker/) or Podman (https://podman.io/docs/installation)"
  fi
}

require_engine() {  # the engine is installed and its daemon (or machine) answers
  local engine=$1
  command -v "$engine" >/dev/null || die "$EXIT_MISSING" "$engine not found: install it, or pick the other engine with --engine"
  "$engine" info >/dev/null 2>&1 \
    || die "$EXIT_MISSING" "$engine is installed but not running ('$engine info' failed): start Docker Desktop, the docker service or 'podman machine start'"
}

require_tool() {  # require_tool NAME HOW-TO-INSTALL
  command -v "$1" >/dev/null || die "$EXIT_MISSING" "$1 not found: $2"
}

require_kind() {
  require_tool kind "install kind $KIND_VERSION ('go install sigs.k8s.io/kind@$KIND_VERSION', or https://kind.sigs.k8s.io/docs/user/quick-start/#installation)"
}

check_cluster_name() {  # kind's own rule (pkg/internal/apis/config/validate.go), checked before anything runs
  [[ $1 =~ ^[a-z0-9.-]+$ ]] || usage_error "invalid cluster name '$1': use lower-case letters, digits, '.' and '-'"
}

use_engine() {  # kind drives Docker unless told otherwise
  if [[ $1 == podman ]]; then
    [[ $DRY_RUN == 1 ]] && echo "export KIND_EXPERIMENTAL_PROVIDER=podman"
    export KIND_EXPERIMENTAL_PROVIDER=podman
  fi
}

print_help() {  # the script's header comment, without the '#'
  awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$1"
}

# parse_args ARGS...: the options both scripts take, into DRY_RUN, CLUSTER and ENGINE (checked); an
# argument they do not know goes to the script's own `extra_arg` (if it defines one), which returns 1
# when it does not know it either.
parse_args() {
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
      *) { declare -F extra_arg >/dev/null && extra_arg "$1"; } || usage_error "unknown argument '$1'" ;;
    esac
    shift
  done
  check_cluster_name "$CLUSTER"
}
