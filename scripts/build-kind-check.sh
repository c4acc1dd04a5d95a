#!/usr/bin/env bash
# Builds `kind-config-check`: kind's own config loader and validator (the code `kind create cluster
# --config` runs before it creates anything) as a small command, from sigs.k8s.io/kind on the Go
# module proxy, once, into a cache outside the repo. Tests run it on manifests/kind/cluster.yaml;
# no container engine is needed.
#
#   scripts/build-kind-check.sh                 # build if needed, print the binary's path (last line)
#   scripts/build-kind-check.sh --print-path    # print the path, build nothing
#
# kind keeps its loader and validator in internal packages (pkg/internal/apis/config), which Go
# lets only code under sigs.k8s.io/kind/pkg import: the command is therefore compiled inside a
# copy of the pinned kind module, as pkg/cambrianconfigcheck.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=SCRIPTDIR/kind-common.sh
source "$HERE/kind-common.sh"          # KIND_VERSION: the one pin of kind's version
CACHE_ROOT=${CAMBRIAN_KIND_CHECK_CACHE:-$HOME/.cache/cambrian/kind-check}
BIN="$CACHE_ROOT/kind-$KIND_VERSION/bin/kind-config-check"

case "${1:-}" in
  --print-path) echo "$BIN"; exit 0 ;;
  "") ;;
  -h|--help) print_help "$0"; exit 0 ;;
  *) echo "build-kind-check: unknown argument: $1 (use --print-path)" >&2; exit 2 ;;
esac

[[ -x $BIN ]] && { echo "$BIN"; exit 0; }
if ! command -v go >/dev/null && [[ -x /usr/local/go/bin/go ]]; then export PATH="/usr/local/go/bin:$PATH"; fi
command -v go >/dev/null || { echo "build-kind-check: 'go' not found on PATH (need go >= 1.17)" >&2; exit 6; }
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS="-mod=mod -buildvcs=false"
mkdir -p "$(dirname "$BIN")"
if command -v flock >/dev/null; then   # one build at a time; a waiting caller then finds the binary
  exec 9>"$(dirname "$BIN")/../.lock"
  flock 9
  [[ -x $BIN ]] && { echo "$BIN"; exit 0; }
fi
WORK=$(mktemp -d "${TMPDIR:-/tmp}/cambrian-kind-check.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
SRC=$(cd "$WORK" && go mod download -json "sigs.k8s.io/kind@$KIND_VERSION" \
      | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
cp -r "$SRC" "$WORK/kind" && chmod -R u+w "$WORK/kind"
mkdir -p "$WORK/kind/pkg/cambrianconfigcheck"
cat > "$WORK/kind/pkg/cambrianconfigcheck/main.go" <<'GO'
// Command kind-config-check loads each kind cluster config file exactly as `kind create cluster
// --config FILE` does (strict decoding, defaults, conversion) and validates it; exit 1 on the first
// invalid file, with kind's own error.
package main

import (
	"fmt"
	"os"

	"sigs.k8s.io/kind/pkg/internal/apis/config/encoding"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: kind-config-check FILE...")
		os.Exit(2)
	}
	for _, path := range os.Args[1:] {
		if path == "" { // kind's Load("") returns the default config; a test means a real file
			fmt.Fprintln(os.Stderr, "kind-config-check: empty path")
			os.Exit(2)
		}
		cfg, err := encoding.Load(path)
		if err == nil {
			err = cfg.Validate()
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "%s: invalid kind config: %v\n", path, err)
			os.Exit(1)
		}
		roles := ""
		for i, n := range cfg.Nodes {
			if i > 0 {
				roles += ","
			}
			roles += string(n.Role)
		}
		fmt.Printf("%s: valid kind config: name=%s nodes=%s\n", path, cfg.Name, roles)
	}
}
GO
(cd "$WORK/kind" && nice -n "${BUILD_NICE:-10}" go build -trimpath -ldflags "-s -w" -o "$WORK/kind-config-check" ./pkg/cambrianconfigcheck)
mv -f "$WORK/kind-config-check" "$BIN"
echo "$BIN"
