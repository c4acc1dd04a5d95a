"""Online faults with the real moving parts: the router restarted (SIGKILL) under load keeps every user in the
same arm.

Prometheus down mid-experiment (no decision until it is back) and a guardrail breach cut within one readout
interval are the reconcile core's, so both platforms': tests/operator/test_reconcile_rollout.py::
test_prometheus_down_decides_nothing_and_retries and tests/reliability/test_guardrails.py (real Prometheus
readouts through the local platform: tests/local/test_local_driver.py, tests/parity).
"""

from __future__ import annotations

import threading
import time

import httpx
import numpy as np
import pytest
import yaml

from cambrian.online.assignment import Assignment
from cambrian.online.runner import BackgroundApp
from cambrian.online.server import ModelServer

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
