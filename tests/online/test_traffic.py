"""Traffic driver: the world's users through the router; deterministic; collector sums match the logs."""

from __future__ import annotations

import httpx
import pytest

from cambrian.online.collector import Collector, Store
from cambrian.online.router import Router, RouterConfig
from cambrian.online.runner import BackgroundApp
from cambrian.online.traffic import TrafficDriver
from cambrian.world.params import WorldParams
from cambrian.world.sim import World


def _run(arm_servers, tmp_path, tag, batch_size):
    world = World(WorldParams.build(n_users=60, n_items=100, n_candidates=30, max_steps_per_day=12), seed=7)
    store = Store(tmp_path / f"{tag}.sqlite")
    with BackgroundApp(Collector(store).app()) as coll:
        cfg = RouterConfig.from_dict({"experiment": "t", "collector": coll.url, "arms": [
            {"name": "control", "url": arm_servers["control"].url, "weight": 60, "control": True},
            {"name": "treatment", "url": arm_servers["treatment"].url, "weight": 40}]})
        with BackgroundApp.of(Router(cfg)) as router:
            driver = TrafficDriver(world, router.url, coll.url, router_admin_url=router.admin_url,
                                   batch_size=batch_size, run_id=tag)
            days = [driver.run_day() for _ in range(2)]
            driver.close()
            stats = httpx.get(coll.url + "/stats").json()
    ud, ex = store.frames()
    return days, stats, ud, ex


def test_deterministic_and_complete(arm_servers, tmp_path):
    days1, stats1, ud1, ex1 = _run(arm_servers, tmp_path, "a", batch_size=1000)
    days2, stats2, ud2, ex2 = _run(arm_servers, tmp_path, "b", batch_size=17)  # batching must not matter
    assert [d.arms for d in days1] == [d.arms for d in days2]
    assert stats1 == stats2
    assert stats1["closed_day"] == 1
    assert ud1.sort_values(["user_id", "day"]).reset_index(drop=True).equals(
        ud2.sort_values(["user_id", "day"]).reset_index(drop=True))
    # every slate served is an impression the collector counted, and every active user is exposed
    assert int(ud1["impressions"].sum()) == sum(d.ranked_users for d in days1) * 6
    assert set(ex1["user_id"]) == set(ud1.loc[ud1["active"] > 0, "user_id"])
    assert stats1["stats"]["t"]["watch_minutes"]["treatment"]["n"] > 0


def test_bad_batch_size():
    with pytest.raises(ValueError, match="batch_size"):
        TrafficDriver(None, "http://x", "http://y", router_admin_url="http://z", batch_size=0)
