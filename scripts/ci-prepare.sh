#!/usr/bin/env bash
# Prepares a fresh machine for the `cluster` test tier: makes sure openssl and a Go >= 1.26
# toolchain are there, then builds (or finds, when cached) the control-plane binaries.
# Idempotent: a second run only checks and prints the bin dir.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

as_root() { if [[ $(id -u) == 0 ]]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else "$@"; fi; }

if ! command -v openssl >/dev/null; then
  echo "ci-prepare: installing openssl" >&2
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends openssl ca-certificates
fi

if ! command -v go >/dev/null && [[ -x /usr/local/go/bin/go ]]; then
  export PATH="/usr/local/go/bin:$PATH"
fi
command -v go >/dev/null || { echo "ci-prepare: Go >= 1.26 is required (https://go.dev/dl); none on PATH" >&2; exit 1; }
GOV=$(go env GOVERSION)                  # e.g. go1.26.8
minor=${GOV#go1.}; minor=${minor%%.*}
if (( minor < 26 )); then
  echo "ci-prepare: $GOV is too old; the pinned modules need go >= 1.26" >&2; exit 1
fi

exec "$HERE/build-test-cluster.sh" "$@"
