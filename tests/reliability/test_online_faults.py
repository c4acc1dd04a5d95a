"""Online faults and guardrails with the real moving parts: the event collector (SQLite), a real
Prometheus scraping it, the router (aiohttp) in front of stand-in model servers, and the rollout
runner's look/apply (online/rollout.py) calling the decision rule on what Prometheus returns.

* Prometheus down mid-experiment: no decision (decide is not even called) until it is back, then the
  experiment continues and decides;
* a guardrail breach cuts the candidate to 0% at the first look that sees it (one evaluation interval),
  measured end to end, and no user is routed to it afterwards;
* the router restarted (SIGKILL) under load keeps every user in the same arm.
"""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml

from cambrian.online.assignment import Assignment
from cambrian.online.collector import Collector, Store
from cambrian.online.router import Router, RouterConfig
from cambrian.online.runner import BackgroundApp
from cambrian.online.server import ModelServer

needs_prom = pytest.mark.skipif(shutil.which("prometheus") is None, reason="prometheus binary not installed")

N_USERS = 3000
SALT = "reliability-exp"


class ModScorer:
    def __init__(self, a: int):
        self.a = a

    def score(self, user_ids, candidates):
        return -((candidates * self.a + user_ids[:, None]) % 97).astype(np.float32)


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


def fill_store(store: Store, hate_control: float, hate_cand: float, seed: int = 0) -> None:
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


@pytest.fixture
def experiment(tmp_path, arms):
    """Collector + Prometheus + router, and a LocalRollout wired to them (without its own processes)."""
    from cambrian.online.prometheus import PromClient, PrometheusProcess
    from cambrian.online.rollout import LocalRollout, RolloutSpec

    def make(hate_control=0.02, hate_cand=0.02):
        store = Store(tmp_path / "collector.sqlite")
        fill_store(store, hate_control, hate_cand)
        collector = BackgroundApp(Collector(store).app()).start()
        cfg_path = tmp_path / "router.yaml"
        cfg_path.write_text(yaml.safe_dump(router_config(arms, {"control": 50, "cand": 50})))
        router = BackgroundApp(Router(RouterConfig.load(cfg_path), config_path=str(cfg_path)).app()).start()
        addr = collector.url.removeprefix("http://")
        prom = PrometheusProcess({"collector": [addr]}, workdir=tmp_path / "prom").start()
        spec = RolloutSpec(name="exp", world=str(tmp_path), control="c", treatments={"cand": "t"}, salt=SALT,
                           north_star="watch_minutes", guardrails=[{"metric": "hate_rate", "margin": 0.05,
                                                                     "higher_is_better": False}],
                           min_users_per_arm=100, planned_users_per_arm=2000, days=8, prometheus_wait_seconds=20)
        lr = LocalRollout(spec, tmp_path / "out")
        lr.out.mkdir(parents=True, exist_ok=True)
        lr.prom = PromClient(prom.url)
        lr.prometheus = prom
        lr.services = {"router": router}
        lr.weights = {"control": 50, "cand": 50}
        lr.weights_by_day = {0: dict(lr.weights)}
        parts.update(store=store, collector=collector, router=router, prom=prom, lr=lr)
        return lr

    parts: dict = {}
    yield make, parts
    if parts.get("prom"):
        parts["prom"].stop()
    for k in ("router", "collector"):
        if parts.get(k):
            parts[k].stop()
    if parts.get("store"):
        parts["store"].close()


@needs_prom
@pytest.mark.prometheus
def test_prometheus_down_means_no_decision_until_it_is_back(experiment, monkeypatch):
    import cambrian.online.rollout as rollout_mod
    from cambrian.online.prometheus import PrometheusProcess

    make, parts = experiment
    lr = make()
    calls = []
    real = rollout_mod.decide
    monkeypatch.setattr(rollout_mod, "decide", lambda *a, **k: calls.append(1) or real(*a, **k))

    first = lr.look(0, 1)
    assert first is not None and len(calls) == 1  # Prometheus up: a look decides (here: continue)
    assert first.outcome != "promote"

    port, workdir = parts["prom"].port, parts["prom"].workdir
    parts["prom"].stop()  # down mid-experiment
    t = time.monotonic()
    assert lr.look(0, 2) is None and lr.look(0, 3) is None
    assert len(calls) == 1, "decide was called without metrics"
    assert time.monotonic() - t < 30
    skipped = [e for e in lr.timeline if e["kind"] == "no_decision"]
    assert len(skipped) == 2 and "Prometheus unavailable" in skipped[0]["reason"]
    assert lr.weights == {"control": 50, "cand": 50}  # nothing moved while blind

    # back on the same address (a restarted Prometheus with a fresh TSDB): the experiment continues
    parts["prom"] = PrometheusProcess({"collector": [parts["collector"].url.removeprefix("http://")]}, port=port,
                                      workdir=Path(workdir).with_name("prom2")).start()
    again = lr.look(0, 4)
    assert again is not None and len(calls) == 2
    assert [e["kind"] for e in lr.timeline][-1] == "readout"


@needs_prom
@pytest.mark.prometheus
def test_guardrail_breach_is_cut_to_zero_at_the_first_look(experiment):
    make, parts = experiment
    lr = make(hate_control=0.02, hate_cand=0.25)  # the candidate makes users hate 10x more items
    router = parts["router"]
    before = httpx.post(router.url + "/rank", json={"user_ids": list(range(200)), "candidates":
                                                    [list(range(30)) for _ in range(200)], "k": 5}).json()["arms"]
    assert "cand" in before
    t0 = time.monotonic()
    decision = lr.look(0, 1)  # the first look after the day with the breach closed
    assert decision is not None
    assert decision.arms["cand"].outcome == "rollback" and "hate_rate" in decision.arms["cand"].reason
    done = lr.apply(decision, 0)
    cut_seconds = time.monotonic() - t0
    assert done
    assert httpx.get(router.url + "/weights").json()["weights"] == {"control": 100, "cand": 0}
    after = httpx.post(router.url + "/rank", json={"user_ids": list(range(500)), "candidates":
                                                   [list(range(30)) for _ in range(500)], "k": 5}).json()["arms"]
    assert set(after) == {"control"}
    # within one evaluation interval: the same look that first saw the data cut the arm, in seconds
    assert cut_seconds < 30
    weights_events = [e for e in lr.timeline if e["kind"] == "weights"]
    assert weights_events[-1]["weights"] == {"control": 100, "cand": 0} and "hate_rate" in weights_events[-1]["why"]


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
                users = rng.integers(0, 5000, 40).tolist()
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
