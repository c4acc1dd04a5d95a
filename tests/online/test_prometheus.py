"""Through a real Prometheus: the collector's sums come back as the same SufficientStats."""

from __future__ import annotations

import shutil
import time

import pytest

from cambrian.online.collector import Collector, Store
from cambrian.online.prometheus import PromClient, PrometheusProcess, PrometheusUnavailable, scrape_config
from cambrian.online.runner import BackgroundApp
from cambrian.stats.sums import RatioStats, SufficientStats

pytestmark = pytest.mark.prometheus
needs_prom = pytest.mark.skipif(shutil.which("prometheus") is None, reason="prometheus binary not installed")


@needs_prom
def test_stats_roundtrip_through_prometheus(tmp_path):
    store = Store(tmp_path / "c.sqlite")
    store.add_user_days([{"user_id": u, "day": d, "active": 1, "impressions": 10, "clicks": u % 4,
                          "minutes": 1.5 * u + d} for u in range(30) for d in range(5)], "b")
    store.add_exposures("exp-1", [[u, "control" if u % 2 else "treatment", 3, 1] for u in range(30)])
    store.close_day(4)
    with BackgroundApp(Collector(store).app()) as coll, \
            PrometheusProcess({"collector": [f"127.0.0.1:{coll.port}"]}) as prom:
        client = PromClient(prom.url)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            r = client.read_experiment("exp-1")
            if r.closed_day == 4 and r.stats:
                break
            time.sleep(0.3)
        assert r.closed_day == 4
        assert r.exposures == {"control": 15, "treatment": 15}
        assert r.cohorts == {1: {"control": 15, "treatment": 15}}  # by the ramp phase of the first exposure
        for arm in ("control", "treatment"):
            wm = r.stats[arm]["watch_minutes"]
            assert isinstance(wm, SufficientStats)
            expect = SufficientStats.from_dict(store.stats["exp-1"]["watch_minutes"][arm])
            assert wm.n == expect.n and wm.sum_y == pytest.approx(expect.sum_y) and wm.sum_xy == pytest.approx(expect.sum_xy)
            assert isinstance(r.stats[arm]["ctr"], RatioStats)
        pid = prom.pid
    # stopped by PID: the process is gone and the client now refuses to answer
    with pytest.raises(ProcessLookupError):
        import os
        os.kill(pid, 0)
    with pytest.raises(PrometheusUnavailable):
        client.read_experiment("exp-1")


def test_config_shape():
    cfg = scrape_config({"router": ["127.0.0.1:1"], "arms": ["127.0.0.1:2", "127.0.0.1:3"]})
    assert cfg["global"]["scrape_interval"] == "1s"
    assert [j["job_name"] for j in cfg["scrape_configs"]] == ["router", "arms"]


@needs_prom
def test_live_traffic_read_back_through_prometheus(arm_servers, tmp_path):
    """World -> router -> model servers; events -> collector; Prometheus scrapes all; decide() on the readout."""
    from cambrian.online.router import Router, RouterConfig
    from cambrian.online.traffic import TrafficDriver
    from cambrian.stats import DecisionPolicy, Metric, decide
    from cambrian.world.params import WorldParams
    from cambrian.world.sim import World

    world = World(WorldParams.build(n_users=80, n_items=100, n_candidates=30, max_steps_per_day=12), seed=5)
    store = Store(tmp_path / "c.sqlite")
    with BackgroundApp(Collector(store).app()) as coll:
        cfg = RouterConfig.from_dict({"experiment": "live", "collector": coll.url, "arms": [
            {"name": "control", "url": arm_servers["control"].url, "weight": 50, "control": True},
            {"name": "treatment", "url": arm_servers["treatment"].url, "weight": 50}]})
        with BackgroundApp.of(Router(cfg)) as router:
            targets = {"servers": [f"127.0.0.1:{arm_servers[a].admin_port}" for a in ("control", "treatment")],
                       "router": [f"127.0.0.1:{router.admin_port}"], "collector": [f"127.0.0.1:{coll.port}"]}
            with PrometheusProcess(targets) as prom:
                driver = TrafficDriver(world, router.url, coll.url, router_admin_url=router.admin_url, run_id="live")
                first = world.day
                for _ in range(2):
                    driver.run_day()
                driver.close()
                client = PromClient(prom.url)
                deadline = time.monotonic() + 30
                while (r := client.read_experiment("live")).closed_day < first + 1 and time.monotonic() < deadline:
                    time.sleep(0.3)
                time.sleep(2)  # a couple more scrapes so that rate() over the servers' histograms has points
                r = client.read_experiment("live")
                p99 = client.latency_p99_ms(window="30s")
                routed = client.query('sum by (arm) (cambrian_router_users_total)')
    assert r.closed_day == first + 1
    assert sum(r.exposures.values()) == len(store.frames()[1])
    assert set(p99) == {"control", "treatment"} and all(v > 0 for v in p99.values())
    assert {lab["arm"] for lab, _ in routed} == {"control", "treatment"}
    direct = store.stats["live"]["watch_minutes"]
    for arm in ("control", "treatment"):
        assert r.stats[arm]["watch_minutes"].n == direct[arm]["n"]
        assert r.stats[arm]["watch_minutes"].sum_y == pytest.approx(direct[arm]["sum_y"])
    observed = {a: sum(c.get(a, 0) for c in r.cohorts.values()) for a in ("control", "treatment")}
    weights = {"control": 0.5, "treatment": 0.5}  # 50/50 on both days (the core's srm_expectation is per step)
    policy = DecisionPolicy(north_star=Metric("watch_minutes"), planned_users_per_arm=100, min_users_per_arm=10,
                            max_days=10)
    d = decide(policy, control="control", weights=weights, stats=r.stats, elapsed_days=2, exposures=observed)
    assert d.outcome in ("continue", "promote", "rollback") and d.srm is not None and not d.srm.mismatch


@needs_prom
def test_a_start_that_fails_inside_with_stops_the_process(tmp_path):
    """`with PrometheusProcess(...)` whose targets never come up: the error names the scrape error, and the
    Prometheus it started is stopped (__exit__ never runs when __enter__ raises)."""
    import subprocess

    from cambrian.errors import CambrianError

    prom = PrometheusProcess({"gone": ["127.0.0.1:1"]}, workdir=tmp_path / "p", start_timeout=10)
    with pytest.raises(CambrianError, match="not every target is up after 10 s"):
        with prom:
            pass
    assert prom.proc is None
    left = subprocess.run(["pgrep", "-f", str(tmp_path / "p")], capture_output=True, text=True).stdout
    assert left == "", left
