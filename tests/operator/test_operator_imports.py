"""The operator process stays small: neither loading its handlers, nor a built-in wake-up (proposals
for every persona, the journal view), nor the static gate on a code hypothesis imports torch or the
machinery that runs candidate code."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("torch", "cambrian.trainer.models", "cambrian.trainer.train", "cambrian.trainer.plugins",
         "cambrian.agents.sandbox_exec")

PROBE = r"""
import json, sys
import cambrian.operator.handlers  # registers the kopf handlers, as `cambrian operator run` does
from cambrian.operator import api
from cambrian.operator import proposing as P
from cambrian.operator.reconcile.actions import Owner, ProposeHypotheses

spec = api.parse_spec("Evolution", {"objective": {"northStar": [{"name": "watch_minutes"}]},
                                    "data": {"world": {}}, "agent": {"provider": "builtin"}})
q = spec.agent.quotas
action = ProposeHypotheses(Owner("Evolution", "evo", "uid", "ns"), 1, "evo-w1-abc",
                           (("explore", q.explore), ("exploit", q.exploit), ("innovate", q.innovate)),
                           tuple(spec.agent.personas), spec.wire(), spec.baseline)
batch = P.ClusterProposer()(action, [])
# the static gate before any Job: plugin code is checked (AST only), never loaded
from datetime import datetime, timezone
from cambrian.operator.reconcile import hypothesis as H
from cambrian.operator.reconcile.common import Meta
hyp = api.parse_spec("Hypothesis", {"evolutionRef": {"name": "evo"}, "component": "optimizer", "explanation": "x",
                                    "delta": {"code": "import os\ndef build_optimizer(params, cfg):\n    return None\n"}})
ctx = H.EvolutionContext("evo", "uid", spec, spec.baseline)
gated = H.reconcile(Meta("h", "u", "ns", 1), hyp, api.HypothesisStatus(), ctx, [], None, datetime.now(timezone.utc))
assert gated.status.phase == "Failed" and gated.status.failure_stage == "static", gated.status
print(json.dumps({"proposals": len(batch.items), "loaded": sorted(m for m in sys.modules if m in HEAVY)}))
"""


def test_operator_and_a_builtin_wakeup_import_no_torch():
    code = f"HEAVY = {HEAVY!r}\n" + PROBE
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["proposals"] > 0, "the wake-up proposed nothing: the probe would prove nothing"
    assert result["loaded"] == [], f"the operator process imported {result['loaded']}"
