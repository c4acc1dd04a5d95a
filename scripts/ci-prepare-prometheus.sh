#!/usr/bin/env bash
# Installs prometheus and promtool (Debian's prometheus package) for the tests marked
# `prometheus` and for the promtool checks of tests/chart.  Does nothing when both are present.
set -euo pipefail
if command -v prometheus >/dev/null && command -v promtool >/dev/null; then
  exit 0
fi
SUDO=""
[[ $(id -u) == 0 ]] || SUDO="sudo"
$SUDO apt-get update -qq
# postinst tries to start the service; where policy-rc.d forbids it nothing runs (tests start it).
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y --no-install-recommends prometheus
prometheus --version | head -1
promtool --version | head -1
