"""Online faults with the real moving parts: the event collector (a process over its SQLite store), a real
Prometheus scraping it, the local platform's readout (operator/platform/local.py) and the reconcile core's
analysis; the router (aiohttp) in front of stand-in model servers.

* a guardrail breach is read back through Prometheus and rolls the arm back at the first readout that sees it;
  Prometheus down mid-experiment: the readout says so at once (MetricsUnavailable) and, once it is back, reads
  again (what the core does without metrics: test_reconcile_rollout.py::test_prometheus_down_decides_nothing_and_retries;
  a breach cut within one readout interval on a clock: test_guardrails.py);
* the router restarted (SIGKILL) under load keeps every user in the same arm.
"""

from __future__ import annotations

import shutil
import threading
import time
from datetime import timedelta

import httpx
import numpy as np
import pytest
import yaml

from cambrian.online.assignment import Assignment
from cambrian.online.runner import BackgroundApp
from cambrian.online.server import ModelServer
from cambrian.testing.scorers import ModScorer

needs_prom = pytest.mark.skipif(shutil.which("prometheus") is None, reason="prometheus binary not installed")

N_USERS = 3000
SALT = "reliability-exp"


@pytest.fixture
def arms():
    apps = {n: BackgroundApp(ModelServer(ModScorer(a), model=f"m{a}", arm=n).app()).start()
            for n, a in (("control", 1), ("cand", 3))}
    yield apps
    for app in apps.values():
        app.stop()


def router_config(arms, weights) -> dict:
    return {"experiment": "exp", "salt": SALT, "arms": [
        {"name": "control", "url": arms["control"].url, "weight": weights["control"], "control": True},
        {"name": "cand", "url": arms["cand"].url, "weight": weights["cand"]}]}


def fill_store(store, hate_control: float, hate_cand: float, seed: int = 0) -> None:
    """Day 0 of an A/B at 50/50: exposures by the real assignment, one user-day each; day 0 closed."""
    rng = np.random.default_rng(seed)
    a = Assignment.create(SALT, "control", ["cand"], {"control": 50, "cand": 50})
    exposures, rows = [], []
    for u in range(N_USERS):
        arm = a.arm_of(u)
        exposures.append([u, arm, 0])
        p = hate_cand if arm == "cand" else hate_control
        rows.append({"user_id": u, "day": 0, "active": 1, "sessions": 2, "impressions": 20, "clicks": 5,
                     "minutes": float(rng.gamma(4, 5)), "likes": 1, "hates": int(rng.binomial(20, p))})
    store.add_exposures("exp", exposures)
    store.add_user_days(rows, "day0")
    store.set_meta("current_day", 0)
    store.close_day(0)


@needs_prom
@pytest.mark.prometheus
@pytest.mark.slow  # two Prometheus starts: ~40 s on 2 busy cores
def test_a_breach_read_through_prometheus_rolls_the_arm_back_and_prometheus_down_is_no_readout(tmp_path):
    from cambrian.online.collector import Store
    from cambrian.operator import api
    from cambrian.operator.localstore import LocalStore
    from cambrian.operator.platform.base import MetricsUnavailable
    from cambrian.operator.platform.local import SIM_EPOCH, LocalPlatform
    from cambrian.operator.platform.local_env import RolloutEnv
    from cambrian.operator.reconcile.readout import analyse

    root = tmp_path / "run"
    platform = LocalPlatform(root, LocalStore(root), lambda: SIM_EPOCH, data_dir=tmp_path, readout_wait_s=20)
    env = RolloutEnv("exp", root / "rollouts" / "exp", tmp_path)
    store = Store(env.dir / "collector.sqlite")
    fill_store(store, hate_control=0.02, hate_cand=0.25)  # the candidate makes users hate 10x more items
    store.close()
    env.state.clock_day0, env.state.world_day0, env.state.days_done = 0, 0, 1  # one day played
    spec = api.RolloutSpec.model_validate({
        "control": {"name": "control", "bundle": "c"}, "salt": SALT,
        "treatments": [{"name": "cand", "hypothesisRef": {"name": "h"}, "bundle": "t"}],
        "ramp": {"steps": [{"weights": [50, 50], "duration": "7d"}]},
        "metrics": {"northStar": [{"name": "watch_minutes"}],
                    "guardrails": [{"metric": "hate_rate", "direction": "minimize", "margin": 0.05}]},
        "statistics": {"minSamplePerArm": 100, "maxDuration": "8d"}})
    status = api.RolloutStatus(phase="Running", started_at=SIM_EPOCH, step_started_at=SIM_EPOCH,
                               step_history=[SIM_EPOCH])
    try:
        env.start_metrics()
        platform.envs["exp"] = env
        r = platform.prometheus_readout("exp")
        assert r.closed_day == 0 and sum(r.exposures.values()) == N_USERS
        a = analyse(spec, status, r.stats, SIM_EPOCH + timedelta(days=1), exposures=r.exposures, cohorts=r.cohorts)
        assert a.outcome == "rollback" and "hate_rate" in a.reason, a.reason

        env.prometheus.stop()  # down mid-experiment
        t = time.monotonic()
        with pytest.raises(MetricsUnavailable):
            platform.prometheus_readout("exp")
        assert time.monotonic() - t < 30
        # back (a restarted Prometheus with a fresh TSDB, as the platform starts it): read again
        env.prometheus = None
        env.start_metrics()
        again = platform.prometheus_readout("exp")
        assert again.closed_day == 0 and again.exposures == r.exposures
    finally:
        env.stop()
        platform.close()


# ---- the router restarted under load ------------------------------------------------------------------

def test_router_killed_under_load_keeps_every_user_in_the_same_arm(arms, tmp_path):
    from cambrian.online.services import ServiceProcess

    path = tmp_path / "router.yaml"
    path.write_text(yaml.safe_dump(router_config(arms, {"control": 70, "cand": 30})))
    seen: dict[int, set[str]] = {}
    errors: list[str] = []
    state = {"url": None, "stop": False}
    lock = threading.Lock()

    def client(k: int):
        rng = np.random.default_rng(k)
        with httpx.Client(timeout=5) as http:
            while not state["stop"]:
                users = rng.integers(0, 1_000_000, 40).tolist()  # never all seen before the kill
                try:
                    r = http.post(state["url"] + "/rank", json={"user_ids": users, "candidates":
                                                                [list(range(20))] * len(users), "k": 3})
                except httpx.HTTPError as exc:
                    errors.append(type(exc).__name__)  # the router is down for a moment: expected
                    time.sleep(0.05)
                    continue
                if r.status_code != 200:
                    errors.append(str(r.status_code))
                    continue
                with lock:
                    for u, arm in zip(users, r.json()["arms"]):
                        seen.setdefault(u, set()).add(arm)

    proc = ServiceProcess("router", ["route", "--config", str(path)], tmp_path / "r1").start().wait_ready()
    state["url"] = proc.url
    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(3)]
    for t in threads:
        t.start()
    try:
        time.sleep(2.0)
        n_before = sum(1 for _ in seen)
        proc.proc.kill()  # SIGKILL under load
        proc.proc.wait(10)
        proc = ServiceProcess("router", ["route", "--config", str(path)], tmp_path / "r2").start().wait_ready()
        state["url"] = proc.url
        time.sleep(2.0)
    finally:
        state["stop"] = True
        for t in threads:
            t.join(10)
        proc.stop()
    assert n_before > 100 and len(seen) > n_before
    moved = {u: arms_ for u, arms_ in seen.items() if len(arms_) > 1}
    assert not moved, f"{len(moved)} users changed arm across the restart"
    expected = Assignment.create(SALT, "control", ["cand"], {"control": 70, "cand": 30})
    assert all(next(iter(a)) == expected.arm_of(u) for u, a in seen.items())
