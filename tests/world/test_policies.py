"""The qualitative result of the reference table (recsys-and-stats.md 1.6) and the calibration."""

from __future__ import annotations

import pytest

from cambrian.world.logs import summarize
from cambrian.world.params import WorldParams
from cambrian.world.policies import oracle_policy
from cambrian.world.sim import World, concat_logs

USERS, DAYS = 700, 16


def _run(policy: str, lam: float = 0.5, users: int = USERS, days: int = DAYS) -> dict:
    world = World(WorldParams(n_users=users), seed=0)
    log = concat_logs(world.run(oracle_policy(world, policy, lam), days))
    ud = log.user_days
    late = ud[ud["day"] >= days // 2]
    s = summarize(log.impressions, ud)["overall"]
    s["late_dau"] = late["active"].mean()
    s["minutes_per_user"] = ud["minutes"].sum() / users
    s["late_satisfaction"] = log.truth[log.truth["day"] == days - 1]["satisfaction_end"].mean()
    return s


@pytest.fixture(scope="module")
def results() -> dict:
    return {name: _run(name) for name in ("ctr_greedy", "satisfaction_aware")}


def test_ctr_greedy_wins_the_proxy(results):
    assert results["ctr_greedy"]["ctr"] > results["satisfaction_aware"]["ctr"] + 0.005


def test_ctr_greedy_loses_the_north_stars(results):
    greedy, aware = results["ctr_greedy"], results["satisfaction_aware"]
    assert greedy["late_dau"] < aware["late_dau"] - 0.15
    assert greedy["minutes_per_user"] < 0.5 * aware["minutes_per_user"]
    assert greedy["return_rate"] < aware["return_rate"]
    assert greedy["late_satisfaction"] < aware["late_satisfaction"]
    assert greedy["completion"] < aware["completion"]


def test_random_logging_policy_is_realistically_calibrated():
    s = _run("random", users=500, days=10)
    assert 0.05 <= s["ctr"] <= 0.15
    assert 0.40 <= s["completion"] <= 0.60
    assert 0.50 <= s["return_rate"] <= 0.80
    assert 0.40 <= s["dau_frac"] <= 0.75
