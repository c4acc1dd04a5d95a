"""The operator process stays small: neither `cambrian operator run` nor a built-in wake-up (proposals for
every persona, the journal view), nor the static gate on a code hypothesis imports torch, the machinery that
trains or runs candidate code, or any module its image lacks (the image installs only the `operator` extra).
They run in a child where those modules cannot be imported (cambrian.testing.blocked) and that reports any
attempt, even one caught."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time

from cambrian.testing.blocked import argv, blocked_imports, outside_extra, prelude

HEAVY = ("torch", "triton", "cambrian.trainer.models", "cambrian.trainer.train", "cambrian.trainer.plugins",
         "cambrian.trainer.gate", "cambrian.trainer.contained", "cambrian.trainer.sandbox",
         "cambrian.trainer.bundle", "cambrian.agents.sandbox_exec", "cambrian.agents.runner")


def blocked() -> set[str]:
    return set(HEAVY) | outside_extra("operator")


# A built-in wake-up's action, as the Evolution's step hands it to the proposer (child scripts share it).
WAKEUP_ACTION = r"""
from cambrian.operator import api
from cambrian.operator import proposing as P
from cambrian.operator.reconcile.actions import Owner, ProposeHypotheses

spec = api.parse_spec("Evolution", {"objective": {"northStar": [{"name": "watch_minutes"}]},
                                    "data": {"world": {}}, "agent": {"provider": "builtin"}})
q = spec.agent.quotas
action = ProposeHypotheses(Owner("Evolution", "evo", "uid", "ns"), 1, "evo-w1-abc",
                           (("explore", q.explore), ("exploit", q.exploit), ("innovate", q.innovate)),
                           tuple(spec.agent.personas), spec.wire(), spec.baseline)
"""

PROBE = r"""
import json, sys
import cambrian.operator.handlers  # registers the kopf handlers, as `cambrian operator run` does
import cambrian.operator.platform.kubernetes, cambrian.operator.proposing, cambrian.operator.metrics
import cambrian.agents.proposers.llm, cambrian.agents.online, cambrian.online.prometheus  # LLM agents, readouts
""" + WAKEUP_ACTION + r"""batch = P.ClusterProposer()(action, [])
# the static gate before any Job: plugin code is checked (AST only), never loaded
from datetime import datetime, timezone
from cambrian.operator.reconcile import hypothesis as H
from cambrian.operator.reconcile.common import Meta
hyp = api.parse_spec("Hypothesis", {"evolutionRef": {"name": "evo"}, "component": "optimizer", "explanation": "x",
                                    "delta": {"code": "import os\ndef build_optimizer(params, cfg):\n    return None\n"}})
ctx = H.EvolutionContext("evo", "uid", spec, spec.baseline)
gated = H.reconcile(Meta("h", "u", "ns", 1), hyp, api.HypothesisStatus(), ctx, [], None, datetime.now(timezone.utc))
assert gated.status.phase == "Failed" and gated.status.failure_stage == "static", gated.status
print(json.dumps({"proposals": len(batch.items)}))
"""

KUBECONFIG = """apiVersion: v1
kind: Config
clusters: [{name: nowhere, cluster: {server: "https://127.0.0.1:9"}}]
users: [{name: u, user: {token: not-a-secret}}]
contexts: [{name: nowhere, context: {cluster: nowhere, user: u}}]
current-context: nowhere
"""


def test_a_builtin_wakeup_imports_no_torch():
    code = prelude(blocked()) + PROBE
    out = subprocess.run([sys.executable, "-P", "-c", code], capture_output=True, text=True, timeout=180)
    assert blocked_imports(out.stderr) == [], f"the operator process tried to import {blocked_imports(out.stderr)}"
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["proposals"] > 0, "the wake-up proposed nothing: the probe would prove nothing"


def test_cambrian_operator_run_starts_without_torch(tmp_path):
    """The real entry point: CLI, extra check, kopf, the startup handler that builds the Kubernetes
    platform and the proposer, then the first API calls (to a server that is not there)."""
    (tmp_path / "kubeconfig").write_text(KUBECONFIG)
    env = {**os.environ, "KUBECONFIG": str(tmp_path / "kubeconfig"), "CAMBRIAN_METRICS_PORT": "off"}
    proc = subprocess.Popen(argv(["operator", "run", "--verbose"], blocked()), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env)
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline and proc.poll() is None:
            if select.select([proc.stdout], [], [], 1.0)[0]:
                line = proc.stdout.readline()
                lines.append(line)
                if "'configure' succeeded" in line or "'configure' failed" in line:
                    break
    finally:
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=60)
    log = "".join(lines) + rest
    assert blocked_imports(log) == [], f"`cambrian operator run` tried to import {blocked_imports(log)}"
    assert "Activity 'configure' succeeded" in log, log[-3000:]
