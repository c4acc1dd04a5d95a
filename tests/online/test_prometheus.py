"""Through a real Prometheus: the collector's sums come back as the same SufficientStats."""

from __future__ import annotations

import shutil
import time

import pytest

from cambrian.online.collector import Collector, Store
from cambrian.online.prometheus import PromClient, PrometheusProcess, PrometheusUnavailable, scrape_config
from cambrian.online.runner import BackgroundApp
from cambrian.operator.statistics.sums import RatioStats, SufficientStats

pytestmark = pytest.mark.prometheus
needs_prom = pytest.mark.skipif(shutil.which("prometheus") is None, reason="prometheus binary not installed")


@needs_prom
def test_stats_roundtrip_through_prometheus(tmp_path):
    store = Store(tmp_path / "c.sqlite")
    store.add_user_days([{"user_id": u, "day": d, "active": 1, "impressions": 10, "clicks": u % 4,
                          "minutes": 1.5 * u + d} for u in range(30) for d in range(5)], "b")
    store.add_exposures("exp-1", [[u, "control" if u % 2 else "treatment", 3] for u in range(30)])
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
        assert r.cohorts == {3: {"control": 15, "treatment": 15}}
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
