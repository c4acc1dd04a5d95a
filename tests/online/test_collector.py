"""Collector: sums equal a direct per-user computation; delayed metrics wait for their window; durability."""

from __future__ import annotations

import random

import httpx
import pytest

from cambrian.online.aggregate import AggregationSettings
from cambrian.online.collector import Collector, Store
from cambrian.online.runner import BackgroundApp

SETTINGS = AggregationSettings(pre_days=3, active_window=2)


def _world(seed=0, users=40, days=8):
    """Random activity for days 0..days-1; the experiment starts on day 3 (days 0-2 are the pre-period) and a
    ramp step on day 5 (phase 1) moves every fifth control user into the treatment. Each user's first exposure
    in a phase is their first active day in it (users who are never active there have none)."""
    rng = random.Random(seed)
    rows = []
    for u in range(users):
        for d in range(days):
            if rng.random() < 0.6:
                imp = rng.randint(1, 20)
                rows.append({"user_id": u, "day": d, "active": 1, "sessions": rng.randint(1, 3), "impressions": imp,
                             "clicks": rng.randint(0, imp), "minutes": round(rng.random() * 30, 3),
                             "likes": 0, "hates": rng.randint(0, 2)})
    active = {(r["user_id"], r["day"]) for r in rows}
    exposures = []
    for u in range(users):
        for phase, days_in in ((0, range(3, 5)), (1, range(5, days))):
            arm = "treatment" if u % 3 == 0 or (phase == 1 and u % 5 == 0) else "control"
            seen = [d for d in days_in if (u, d) in active]
            if seen:
                exposures.append([u, arm, seen[0], phase])
    return rows, exposures


def _direct(rows, exposures, closed):
    """An independent, loop-by-loop computation of the same definitions: the units are the first exposures of
    the latest phase with an exposure on a closed day, each read from its day to the closed day."""
    by = {(r["user_id"], r["day"]): r for r in rows}
    start = min(e[2] for e in exposures)
    phase = max(e[3] for e in exposures if e[2] <= closed)
    out = {}
    for u, arm, f, ph in exposures:
        if ph != phase or f > closed:
            continue
        end = closed + 1
        get = lambda d, k: by.get((u, d), {}).get(k, 0)  # noqa: E731
        acc = out.setdefault(arm, {"wm": [], "ctr": [], "ret": [], "act": []})
        n_days = end - f
        y = sum(get(d, "minutes") for d in range(f, end)) / n_days
        x = sum(get(d, "minutes") for d in range(start - 3, start)) / 3
        acc["wm"].append((y, x))
        acc["ctr"].append((sum(get(d, "clicks") for d in range(f, end)),
                           sum(get(d, "impressions") for d in range(f, end))))
        if f + 1 <= closed:
            acc["ret"].append(float(get(f + 1, "active") > 0))
        if f + 2 <= closed:
            acc["act"].append(sum(get(d, "active") for d in (f + 1, f + 2)))
    return out


@pytest.mark.parametrize("closed", [3, 4, 5, 7])
def test_sums_equal_direct_computation(tmp_path, closed):
    rows, exposures = _world()
    store = Store(tmp_path / "c.sqlite", SETTINGS)
    store.add_user_days(rows, "b1")
    store.add_exposures("exp", exposures)
    store.close_day(closed)
    stats = store.stats["exp"]
    direct = _direct(rows, exposures, closed)
    for arm, acc in direct.items():
        wm = stats["watch_minutes"][arm]
        assert wm["n"] == len(acc["wm"])
        assert wm["sum_y"] == pytest.approx(sum(y for y, _ in acc["wm"]))
        assert wm["sum_x"] == pytest.approx(sum(x for _, x in acc["wm"]))
        # second moments about the metric's reference, shared by every arm
        ry, rx = wm["ref_y"], wm["ref_x"]
        assert (ry, rx) == (stats["watch_minutes"]["control"]["ref_y"], stats["watch_minutes"]["control"]["ref_x"])
        assert wm["sum_y2"] == pytest.approx(sum((y - ry) ** 2 for y, _ in acc["wm"]))
        assert wm["sum_xy"] == pytest.approx(sum((x - rx) * (y - ry) for y, x in acc["wm"]))
        ctr = stats["ctr"][arm]
        assert ctr["sum_m"] == sum(m for m, _ in acc["ctr"]) and ctr["sum_d"] == sum(d for _, d in acc["ctr"])
        assert ctr["sum_md"] == pytest.approx(sum((m - ctr["ref_m"]) * (d - ctr["ref_d"]) for m, d in acc["ctr"]))
        assert stats["returned_next_day"][arm]["n"] == len(acc["ret"])
        assert stats["returned_next_day"][arm]["sum_y"] == sum(acc["ret"])
        assert stats["active_days"][arm]["n"] == len(acc["act"])
        assert stats["active_days"][arm]["sum_y"] == sum(acc["act"])


def test_delayed_metrics_wait_for_their_window(tmp_path):
    store = Store(tmp_path / "c.sqlite", SETTINGS)
    store.add_user_days([{"user_id": 1, "day": 5, "active": 1, "impressions": 3, "clicks": 1, "minutes": 2.0}], "a")
    store.add_exposures("exp", [[1, "control", 5]])
    store.close_day(4)  # exposure day still open: nothing at all
    assert all(a["n"] == 0 for m in store.stats["exp"].values() for a in m.values())
    store.close_day(5)  # day 5 closed: watch minutes yes, next-day return not yet
    s = store.stats["exp"]
    assert s["watch_minutes"]["control"]["n"] == 1 and s["returned_next_day"]["control"]["n"] == 0
    store.add_user_days([{"user_id": 1, "day": 6, "active": 1}], "b")
    store.close_day(6)  # f+1 closed: returned; active_days (window 2) still waits for day 7
    s = store.stats["exp"]
    assert s["returned_next_day"]["control"] == {"n": 1, "sum_y": 1.0, "sum_y2": 0.0, "sum_x": 0.0,
                                                 "sum_x2": 0.0, "sum_xy": 0.0, "ref_y": 1.0, "ref_x": 0.0}
    assert s["active_days"]["control"]["n"] == 0
    store.close_day(7)
    assert store.stats["exp"]["active_days"]["control"]["sum_y"] == 1.0


def test_http_restart_and_duplicates(tmp_path):
    rows, exposures = _world(seed=1, users=10, days=6)
    db = tmp_path / "c.sqlite"
    with BackgroundApp(Collector(Store(db, SETTINGS)).app()) as app:
        cols = {k: [r[k] for r in rows] for k in rows[0]}
        assert httpx.post(app.url + "/events", json={"batch_id": "d0", "columns": cols}).json()["applied"] == len(rows)
        assert httpx.post(app.url + "/events", json={"batch_id": "d0", "columns": cols}).json()["duplicate"]
        assert httpx.post(app.url + "/clock", json={"day": 4}).status_code == 200
        ex = [[u, arm, None] for u, arm, _, _ in exposures]
        assert httpx.post(app.url + "/exposures", json={"experiment": "e", "exposures": ex}).status_code == 200
        assert httpx.post(app.url + "/close_day", json={"day": 5}).status_code == 200
        r = httpx.post(app.url + "/events", json={"rows": [{"user_id": "x", "day": 1}]})
        assert r.status_code == 400 and "rows[0].user_id" in r.json()["error"]
        r = httpx.post(app.url + "/close_day", json={"day": 2})
        assert r.status_code == 400 and "day" in r.json()["error"]
        before = httpx.get(app.url + "/stats").json()
        metrics = httpx.get(app.url + "/metrics").text
    assert 'cambrian_arm_stat{arm="control",experiment="e",metric="watch_minutes",stat="sum_y"}' in metrics
    assert 'cambrian_arm_exposures{arm="treatment",experiment="e"}' in metrics
    assert "cambrian_collector_closed_day 5.0" in metrics
    assert "user_id" not in metrics.replace("cambrian_", "")  # no user ids in labels
    with BackgroundApp(Collector(Store(db, SETTINGS)).app()) as app:  # restart: same state
        assert httpx.get(app.url + "/stats").json() == before


def test_cohorts_for_srm(tmp_path):
    store = Store(tmp_path / "c.sqlite", SETTINGS)
    # day 3: u1..u3 new (2 control, 1 t); day 4: u1 ramped control->t (not new), u4 new in t
    store.add_exposures("e", [[1, "control", 3], [2, "control", 3], [3, "t", 3], [1, "t", 4], [4, "t", 4]])
    store.close_day(3)
    assert store.snapshot[2]["e"] == {("control", 3, 0): 2, ("t", 3, 0): 1}  # a log without phases: phase 0
    store.close_day(4)
    assert store.snapshot[2]["e"] == {("control", 3, 0): 2, ("t", 3, 0): 1, ("t", 4, 0): 1}


def test_cohorts_count_a_users_first_exposure_in_the_experiment_over_every_phase(tmp_path):
    store = Store(tmp_path / "c.sqlite", SETTINGS)
    # phase 0 from day 3: u1, u2 control, u3 t; phase 1 from day 4: u1 moved to t, u2 stays (seen again), u4 new
    store.add_exposures("e", [[1, "control", 3, 0], [2, "control", 3, 0], [3, "t", 3, 0],
                              [1, "t", 4, 1], [2, "control", 4, 1], [4, "t", 4, 1]])
    store.close_day(4)
    assert store.snapshot[2]["e"] == {("control", 3, 0): 2, ("t", 3, 0): 1, ("t", 4, 1): 1}
    # the statistics read phase 1 alone: u1 and u4 in t, u2 in control (each from day 4); u3 not seen there yet
    wm = store.stats["e"]["watch_minutes"]
    assert (wm["control"]["n"], wm["t"]["n"]) == (1, 2)


def test_exposures_count_users_once_per_arm_whatever_the_phases(tmp_path):
    # before, COUNT(*) over (user, arm, phase) rows: a control user seen in three phases counted three times
    store = Store(tmp_path / "c.sqlite", SETTINGS)
    store.add_exposures("e", [[1, "control", 3, 1], [1, "control", 4, 2], [1, "control", 5, 3], [2, "t", 3, 1]])
    assert store.exposure_counts() == {("e", "control"): 1, ("e", "t"): 1}


def test_an_exposure_without_a_day_never_lands_on_a_closed_day(tmp_path):
    # between /close_day d and /clock d + 1 (and for a batch the router resends after an outage) "now" is after day
    # d: before, a null day took the current day d, and a closed day's cohorts changed after the fact
    store = Store(tmp_path / "c.sqlite", SETTINGS)
    store.set_meta("current_day", 8)
    store.add_exposures("e", [[1, "control", None, 1]])
    store.close_day(8)
    store.add_exposures("e", [[2, "t", None, 1]])
    store.close_day(9)
    assert store.snapshot[2]["e"] == {("control", 8, 1): 1, ("t", 9, 1): 1}


def test_warehouse_sums_are_published_only_under_the_day_they_were_computed_for(tmp_path):
    # before, a close merged the previous landing's sums under the new closed day (stale until the next landing,
    # and for ever when that landing failed)
    store = Store(tmp_path / "c.sqlite", SETTINGS)
    store.add_exposures("e", [[1, "control", 3, 1], [2, "t", 3, 1]])
    store.close_day(7)
    sums = {"e": {"sql_minutes": {"control": {"n": 1, "sum_y": 10.0}, "t": {"n": 1, "sum_y": 12.0}}}}
    store.set_external(7, sums)
    assert store.stats["e"]["sql_minutes"] == sums["e"]["sql_minutes"]
    store.close_day(8)
    assert "sql_minutes" not in store.stats["e"]  # missing (nothing decides on it) until day 8's landing
    store.set_external(8, sums)
    assert store.stats["e"]["sql_minutes"] == sums["e"]["sql_minutes"]


def test_an_aa_test_through_a_ramp_reads_no_effect(tmp_path):
    """The same model in both arms, the demo's ramp (10%, 25%, then 50% of users in the treatment, a day each):
    the current phase's per-arm means agree at every readout. Read across phases (a user's window from their
    first exposure to the arm until they were first seen in another), the same users read +13% on the day of
    the last step and -3.5% a week later (the benchmark's trap was launched on such a reading)."""
    import numpy as np

    from cambrian.online.assignment import buckets
    from cambrian.stats.estimators import compare
    from cambrian.stats.sums import SufficientStats

    rng = np.random.default_rng(1)
    users = 6000
    b = buckets(range(users), "aa-salt")
    p = rng.beta(6, 2.7, users)  # heavy and light users: a daily activity of about 0.69
    ramp = ((0, 10), (1, 25), (2, 50))  # (first day, treatment percent)
    store = Store(tmp_path / "c.sqlite", AggregationSettings(pre_days=8))
    for d in range(-8, 10):
        act = rng.uniform(size=users) < p
        ids = np.flatnonzero(act)
        minutes = rng.gamma(3, 5.7, users)
        store.add_user_days([{"user_id": int(u), "day": d, "active": 1, "sessions": 1, "impressions": 10,
                              "clicks": 1, "minutes": float(minutes[u]), "likes": 0, "hates": 0} for u in ids], f"d{d}")
        if d >= 0:
            phase = max(i for i, (start, _) in enumerate(ramp) if start <= d)
            arm = np.where(b[ids] < ramp[phase][1] * 100, "treatment", "control")
            store.add_exposures("aa", [[int(u), str(a), d, phase] for u, a in zip(ids, arm)])
        if d in (3, 4, 9):
            store.close_day(d)
            s = {a: SufficientStats(**v) for a, v in store.stats["aa"]["watch_minutes"].items()}
            eff = compare(s["control"], s["treatment"], cuped=True, relative=True)
            assert abs(eff.estimate) < 3 * eff.variance ** 0.5, (d, eff)
            assert s["treatment"].n > 0.9 * s["control"].n  # a 50/50 phase: about as many users in each arm


def test_a_store_from_before_phases_keeps_its_exposures_as_phase_0(tmp_path):
    import sqlite3

    db = tmp_path / "c.sqlite"
    con = sqlite3.connect(db)
    con.executescript("CREATE TABLE exposure (experiment TEXT NOT NULL, user_id INTEGER NOT NULL, arm TEXT NOT NULL, "
                      "day INTEGER NOT NULL, PRIMARY KEY (experiment, user_id, arm));"
                      "INSERT INTO exposure VALUES ('e', 1, 'control', 3), ('e', 2, 't', 4);")
    con.close()
    store = Store(db, SETTINGS)
    ex = store.frames()[1]
    assert ex[["user_id", "arm", "day", "phase"]].values.tolist() == [[1, "control", 3, 0], [2, "t", 4, 0]]
    assert store.add_exposures("e", [[1, "control", 5]]) == 0  # the same key: still the first exposure
    assert store.add_exposures("e", [[1, "t", 5, 1]]) == 1
    assert store.exposures_after(2)[0][["user_id", "phase"]].values.tolist() == [[1, 1]]  # rowids kept in order
