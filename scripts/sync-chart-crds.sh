#!/usr/bin/env bash
# Copies the CRDs (crds/*.yaml, the source of truth) into the Helm chart's crds/ folder, byte for
# byte, and removes chart copies whose source is gone.  crds/kustomization.yaml (which lets
# manifests/base include ../../crds) is not a CRD and is never copied: Helm would apply it.  tests/chart/test_crds_sync.py fails when
# the two folders differ.
#
#   scripts/sync-chart-crds.sh          # sync
#   scripts/sync-chart-crds.sh --check  # change nothing; exit 1 and name the files that differ
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SRC="$ROOT/crds"
DST="$ROOT/charts/cambrian/crds"
CHECK=0
case "${1:-}" in
  --check) CHECK=1 ;;
  "") ;;
  *) echo "usage: $0 [--check]" >&2; exit 2 ;;
esac

shopt -s nullglob
mkdir -p "$DST"
status=0
for src in "$SRC"/*.yaml; do
  [[ $(basename "$src") == kustomization.yaml ]] && continue
  dst="$DST/$(basename "$src")"
  if ! cmp -s "$src" "$dst"; then
    if [[ $CHECK == 1 ]]; then echo "differs: charts/cambrian/crds/$(basename "$src")"; status=1
    else cp "$src" "$dst"; echo "copied crds/$(basename "$src")"; fi
  fi
done
for dst in "$DST"/*.yaml "$DST"/*.yml "$DST"/*.json; do
  if [[ ! -e "$SRC/$(basename "$dst")" || $(basename "$dst") == kustomization.yaml ]]; then
    if [[ $CHECK == 1 ]]; then echo "stale: charts/cambrian/crds/$(basename "$dst")"; status=1
    else rm -f "$dst"; echo "removed stale charts/cambrian/crds/$(basename "$dst")"; fi
  fi
done
exit $status
