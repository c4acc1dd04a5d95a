#!/usr/bin/env bash
# Builds the binaries of Cambrian's test control plane from the Go module proxy, once, into a
# cache outside the repo:  etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubectl,
# kwok (the controller) and helm.  A second run finds them and only prints the bin dir.
#
#   scripts/build-test-cluster.sh                 # build if needed, print the bin dir (last line)
#   scripts/build-test-cluster.sh --print-bin-dir # print the bin dir, build nothing
#   scripts/build-test-cluster.sh --force         # rebuild even when the binaries exist
#
# Versions are pinned here (override through the environment).  The cache key is the version
# tuple, so bumping a pin builds into a fresh directory.
set -euo pipefail

K8S_VERSION=${K8S_VERSION:-1.36.3}     # k8s.io/kubernetes v1.x.y; its staging modules are v0.x.y
ETCD_VERSION=${ETCD_VERSION:-3.6.16}   # apiserver >=1.31 needs etcd >=3.5.13 (RequestWatchProgress)
KWOK_VERSION=${KWOK_VERSION:-v0.8.0}   # go.mod says go 1.26.0 -> builds with the local go1.26
HELM_VERSION=${HELM_VERSION:-v3.22.0}
CACHE_ROOT=${CAMBRIAN_CLUSTER_CACHE:-$HOME/.cache/cambrian/test-cluster}
KEY="k8s-${K8S_VERSION}_etcd-${ETCD_VERSION}_kwok-${KWOK_VERSION}_helm-${HELM_VERSION}"
BIN_DIR="$CACHE_ROOT/$KEY/bin"
BINARIES=(etcd kube-apiserver kube-controller-manager kube-scheduler kubectl kwok helm)

FORCE=0
case "${1:-}" in
  --print-bin-dir) echo "$BIN_DIR"; exit 0 ;;
  --force) FORCE=1 ;;
  "") ;;
  -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
  *) echo "unknown argument: $1 (use --print-bin-dir, --force)" >&2; exit 2 ;;
esac

all_present() {
  local b
  for b in "${BINARIES[@]}"; do [[ -x "$BIN_DIR/$b" ]] || return 1; done
}

if [[ $FORCE == 0 ]] && all_present; then
  echo "$BIN_DIR"
  exit 0
fi

command -v go >/dev/null || { echo "build-test-cluster: 'go' not found on PATH (need go >= 1.26)" >&2; exit 1; }
# Never let go fetch another toolchain: every pinned module declares go <= 1.26.0.
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS="-mod=mod -buildvcs=false"
NICE=(nice -n "${BUILD_NICE:-10}")
mkdir -p "$BIN_DIR"
# One build at a time per version tuple; a waiting caller then finds the binaries.
if command -v flock >/dev/null; then
  exec 9>"$BIN_DIR/../.lock"
  flock 9
  if [[ $FORCE == 0 ]] && all_present; then echo "$BIN_DIR"; exit 0; fi
fi
WORK=$(mktemp -d "${TMPDIR:-/tmp}/cambrian-cluster-build.XXXXXX")
# Binaries are linked into STAGE and moved into BIN_DIR only when complete, so an interrupted
# build never leaves a truncated executable that would pass the presence check.
STAGE=$(mktemp -d "$BIN_DIR/../.stage.XXXXXX")   # same filesystem as BIN_DIR: mv is a rename
trap 'rm -rf "$WORK" "$STAGE"' EXIT
log() { echo "[build-test-cluster $(date +%H:%M:%S)] $*" >&2; }
START=$(date +%s)

build_if_missing() {  # build_if_missing <fn> <binaries...>: skip a step whose outputs exist
  local fn=$1; shift
  if [[ $FORCE == 0 ]]; then
    local b missing=0
    for b in "$@"; do [[ -x "$BIN_DIR/$b" ]] || missing=1; done
    [[ $missing == 0 ]] && { log "$* already built"; return 0; }
  fi
  "$fn"
  for b in "$@"; do mv -f "$STAGE/$b" "$BIN_DIR/$b"; done
}

# --- Kubernetes: wrapper module replacing every staging module by its published version ----------
build_k8s() {
  local minor=${K8S_VERSION#1.}; minor=${minor%%.*}
  local staging="0.${K8S_VERSION#1.}" d="$WORK/k8s"
  mkdir -p "$d" && cd "$d"
  go mod init local/cambrian-k8s-bins >/dev/null 2>&1
  log "k8s v$K8S_VERSION: reading staging list from the proxy's go.mod"
  local gomod mods
  gomod=$(go mod download -json "k8s.io/kubernetes@v$K8S_VERSION" \
          | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')
  mods=$(sed -n 's#^[[:space:]]*\(k8s\.io/[A-Za-z0-9._-]*\) => \./staging/.*#\1#p' "$gomod")
  [[ -n $mods ]] || { echo "no staging replaces found in $gomod" >&2; exit 1; }
  local m
  for m in $mods; do go mod edit -replace="$m=$m@v$staging"; done
  log "k8s: $(echo "$mods" | wc -l) staging modules replaced by v$staging; go get"
  "${NICE[@]}" go get "k8s.io/kubernetes@v$K8S_VERSION" >&2
  local ld="-s -w" p
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld="$ld -X $p.gitVersion=v$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean"
  done
  log "k8s: go build (kube-apiserver, kube-controller-manager, kube-scheduler, kubectl)"
  # One go build: the shared dependency graph is compiled once for all four commands.
  "${NICE[@]}" go build -trimpath -ldflags "$ld" -o "$STAGE/" \
    k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl
}

# --- etcd: own wrapper (server/v3's go.mod has replace lines; as a dependency they are ignored) ---
build_etcd() {
  local d="$WORK/etcd"
  mkdir -p "$d" && cd "$d"
  go mod init local/cambrian-etcd-bin >/dev/null 2>&1
  log "etcd v$ETCD_VERSION: go get + build"
  "${NICE[@]}" go get "go.etcd.io/etcd/server/v3@v$ETCD_VERSION" >&2
  "${NICE[@]}" go build -trimpath -ldflags "-s -w" -o "$STAGE/etcd" go.etcd.io/etcd/server/v3
}

# --- kwok and helm: their go.mod files carry no replace directives -> plain go install ---------
build_kwok() {
  log "kwok $KWOK_VERSION: go install"
  # consts.Version keeps kwok from reporting "unknown" (kwok issue #520).
  GOBIN="$STAGE" "${NICE[@]}" go install -trimpath \
    -ldflags "-s -w -X sigs.k8s.io/kwok/pkg/consts.Version=$KWOK_VERSION" \
    "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
}

build_helm() {
  log "helm $HELM_VERSION: go install"
  local major=${HELM_VERSION%%.*}
  GOBIN="$STAGE" "${NICE[@]}" go install -trimpath \
    -ldflags "-s -w -X helm.sh/helm/${major}/internal/version.version=$HELM_VERSION" \
    "helm.sh/helm/${major}/cmd/helm@$HELM_VERSION"
}

build_if_missing build_etcd etcd
build_if_missing build_kwok kwok
build_if_missing build_helm helm
build_if_missing build_k8s kube-apiserver kube-controller-manager kube-scheduler kubectl

all_present || { echo "build-test-cluster: some binaries are missing in $BIN_DIR" >&2; exit 1; }
{
  echo "k8s=$K8S_VERSION etcd=$ETCD_VERSION kwok=$KWOK_VERSION helm=$HELM_VERSION go=$(go env GOVERSION)"
  "$BIN_DIR/etcd" --version | head -1
  "$BIN_DIR/kube-apiserver" --version
  "$BIN_DIR/kubectl" version --client 2>/dev/null | head -1
  "$BIN_DIR/kwok" --version 2>/dev/null | head -1 || true
  "$BIN_DIR/helm" version --short
} > "$BIN_DIR/../VERSIONS" 2>&1 || true
log "done in $(( $(date +%s) - START ))s"
echo "$BIN_DIR"
