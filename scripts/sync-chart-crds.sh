#!/usr/bin/env bash
# Copies the CRDs (crds/*.yaml, the source of truth, written by `python -m cambrian.operator.crdgen`)
# byte for byte into the two places that need their own copy, and removes copies whose source is gone:
#   charts/cambrian/crds/   Helm installs every file there as a CRD
#   manifests/crds/         `kubectl apply -k manifests/crds` (kustomize reads only files at or below
#                           a kustomization, so it cannot list ../../crds/*.yaml); its
#                           kustomization.yaml is not a CRD and is left alone
# tests/chart/test_crds_sync.py fails when a copy differs.
#
#   scripts/sync-chart-crds.sh          # sync
#   scripts/sync-chart-crds.sh --check  # change nothing; exit 1 and name the files that differ
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SRC="$ROOT/crds"
CHECK=0
case "${1:-}" in
  --check) CHECK=1 ;;
  "") ;;
  *) echo "usage: $0 [--check]" >&2; exit 2 ;;
esac

shopt -s nullglob
status=0
for rel in charts/cambrian/crds manifests/crds; do
  dst_dir="$ROOT/$rel"
  mkdir -p "$dst_dir"
  for src in "$SRC"/*.yaml; do
    dst="$dst_dir/$(basename "$src")"
    if ! cmp -s "$src" "$dst"; then
      if [[ $CHECK == 1 ]]; then echo "differs: $rel/$(basename "$src")"; status=1
      else cp "$src" "$dst"; echo "copied crds/$(basename "$src") to $rel/"; fi
    fi
  done
  for dst in "$dst_dir"/*.yaml "$dst_dir"/*.yml "$dst_dir"/*.json; do
    name=$(basename "$dst")
    [[ $rel == manifests/crds && $name == kustomization.yaml ]] && continue
    if [[ ! -e "$SRC/$name" ]]; then
      if [[ $CHECK == 1 ]]; then echo "stale: $rel/$name"; status=1
      else rm -f "$dst"; echo "removed stale $rel/$name"; fi
    fi
  done
done
exit $status
