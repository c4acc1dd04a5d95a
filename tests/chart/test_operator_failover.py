"""Failover of the operator as the chart deploys it (two replicas, kopf peering), on the real test control plane.

Both operator pods run (the pod runtime harness, as in test_operator_as_deployed.py). The one with the
higher priority in the ClusterKopfPeering works, the other waits. The active one is killed (SIGKILL, a
crash: it cannot withdraw from the peering) while an Evolution's baseline training Job is in flight;
the standby must take over once the dead peer's lifetime has passed, re-list the Evolution (its
in-process indexes and settle windows start empty: kopf re-lists on resume), keep the one Job it finds
instead of creating a second, and serve new work.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
import yaml

from cambrian.testing.deployed import deployed_chart

pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "manifests" / "examples" / "quickstart" / "evolution.yaml"


def training_jobs(c, ns: str) -> list[str]:
    return sorted(j["metadata"]["name"] for j in c.get_json("jobs", "-n", ns)["items"])


def working(log: str) -> bool:
    """Whether a peering kopf operator works: it starts paused and logs each change of state."""
    return log.rfind("Resuming operations") > log.rfind("Pausing operations")


def work(c, ns: str) -> dict:
    """What the operator created for the Evolutions: Jobs and Hypotheses, by name."""
    return {"jobs": training_jobs(c, ns),
            "hypotheses": sorted(h["metadata"]["name"] for h in c.get_json("hypotheses", "-n", ns)["items"])}


def test_standby_takes_over_when_the_active_operator_dies(cluster, tmp_path):
    c = cluster
    with deployed_chart(c, tmp_path) as d:
        prefix = f"{d.release}-cambrian-operator-"
        operators = lambda: sorted(n for n in d.runtime.services if n.startswith(prefix))  # noqa: E731
        d.wait_for("both operator replicas", lambda: len(operators()) == 2, timeout=120)
        peering = f"{d.release}-cambrian-operator"

        def peers() -> dict:
            return c.get_json("clusterkopfpeering", peering).get("status") or {}

        log = lambda name: d.runtime.log(name)  # noqa: E731
        # Both processes up (kopf logs its login once started; on a loaded machine that takes a while).
        d.wait_for("both replicas started", lambda: all("Activity 'login' succeeded" in log(n) for n in operators()),
                   timeout=300)
        d.wait_for("both replicas in the peering", lambda: set(operators()) <= set(peers()), timeout=120)
        by_priority = sorted(operators(), key=lambda n: peers()[n]["priority"])
        standby, active = by_priority
        d.operator_pod = standby  # d.wait_for reports this one's log (and fails if it exits)
        # kopf starts a peering operator paused; it logs only changes (Pausing / Resuming operations).
        d.wait_for("the active replica to work and the standby to wait",
                   lambda: working(log(active)) and not working(log(standby)), timeout=180)

        app = d.workloads[0]
        c.kubectl("apply", "-n", app, "-f", str(EXAMPLE))
        d.wait_for("the baseline training Job", lambda: training_jobs(c, app), timeout=240)
        # The first wake-up creates the baseline, its seed repeats and the first Hypotheses' Jobs: wait
        # until the set is stable (the Jobs never finish here: nothing runs them).
        stable = []
        d.wait_for("a stable set of Jobs", lambda: stable.append(work(c, app)) or stable[-8:] == [stable[-1]] * 8,
                   timeout=120)
        before = stable[-1]
        assert before["jobs"] and before["hypotheses"], before
        assert f"Evolution {app}/quickstart:" in log(active)
        assert f"{app}/quickstart" not in log(standby), "the paused replica handled the Evolution"
        assert not working(log(standby))

        # A crash mid-Evolution: no graceful exit, so its entry stays in the peering until it expires.
        os.killpg(d.runtime.services[active]["procs"]["operator"].pid, signal.SIGKILL)
        killed_at = time.monotonic()
        d.wait_for("the standby to resume", lambda: working(log(standby)), timeout=180)
        takeover_s = time.monotonic() - killed_at
        time.sleep(30)  # two timer intervals (15 s) of the new active replica over the re-listed objects
        assert work(c, app) == before, "the new active replica duplicated or lost work"
        assert d.runtime.exited(standby) == {}, log(standby)[-4000:]

        # The new active replica serves new work.
        second = yaml.safe_load(EXAMPLE.read_text())
        second["metadata"]["name"] = "quickstart-two"
        c.kubectl("apply", "-n", app, "-f", "-", input=json.dumps(second))
        d.wait_for("the second Evolution's Jobs",
                   lambda: any(j.startswith("quickstart-two-") for j in training_jobs(c, app)), timeout=240)
        assert set(before["jobs"]) < set(training_jobs(c, app))
        d.wait_for("the new active replica's log of it", lambda: f"Evolution {app}/quickstart-two:" in log(standby),
                   timeout=30)
        assert active not in peers(), "the dead replica was not cleaned from the peering"
        assert d.forbidden() == [], log(standby)[-4000:]
        print(f"takeover after SIGKILL: {takeover_s:.0f} s")
