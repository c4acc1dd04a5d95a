"""The operator process stays small: neither loading its handlers nor a built-in wake-up (proposals
for every persona, the journal view) imports torch or the machinery that runs candidate code."""

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
print(json.dumps({"proposals": len(batch.items), "loaded": sorted(m for m in sys.modules if m in HEAVY)}))
"""


def test_operator_and_a_builtin_wakeup_import_no_torch():
    code = f"HEAVY = {HEAVY!r}\n" + PROBE
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["proposals"] > 0, "the wake-up proposed nothing: the probe would prove nothing"
    assert result["loaded"] == [], f"the operator process imported {result['loaded']}"
