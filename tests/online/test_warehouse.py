"""Warehouse-native metrics (online/warehouse.py): the sums the warehouse computes from the user's own SQL
equal those online/aggregate.py computes from the collector's store, on DuckDB and on a real PostgreSQL."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cambrian.online.aggregate import arm_statistics, cohort_sizes
from cambrian.online.warehouse import (WarehouseError, WarehouseMetric, check_metric_sql, record_exposures,
                                       warehouse_readout)
from cambrian.stats.sums import RatioStats, SufficientStats

WATCH = WarehouseMetric("watch_minutes", "SELECT user_id, day, minutes AS value FROM user_days")
CTR = WarehouseMetric("ctr", "SELECT user_id, day, clicks AS numerator, impressions AS denominator FROM user_days",
                      "ratio")


def _world(seed: int = 3, users: int = 300, days: int = 14):
    """User-days with gaps (inactive days have no row), and an experiment from day 7 with a ramp that moves
    some users from control to the treatment on day 9."""
    rng = np.random.default_rng(seed)
    rows = [(u, d, float(rng.gamma(2, 10)), int(rng.poisson(2)), int(rng.poisson(8)))
            for u in range(users) for d in range(days) if rng.random() < 0.7]
    ud = pd.DataFrame(rows, columns=["user_id", "day", "minutes", "clicks", "impressions"])
    exp = []
    for u in range(users):
        first = 7 + int(rng.integers(0, 4))
        arm = "treatment" if rng.random() < 0.5 else "control"
        exp.append((u, arm, first))
        if arm == "control" and first < 9 and rng.random() < 0.3:
            exp.append((u, "treatment", 9))
    return ud, pd.DataFrame(exp, columns=["user_id", "arm", "day"])


def _close(a: dict, b: dict) -> None:
    assert set(a) == set(b), (a, b)
    for k in a:
        assert a[k] == pytest.approx(b[k], rel=1e-9, abs=1e-9), (k, a[k], b[k])


def _check_against_the_collector_path(con, ud, exposures, closed_day):
    readout = warehouse_readout(con, "exp-1", [WATCH, CTR], closed_day, at=123.0)
    want = arm_statistics(exposures, ud, closed_day)
    for arm in ("control", "treatment"):
        got_w = readout.stats[arm]["watch_minutes"]
        got_c = readout.stats[arm]["ctr"]
        assert isinstance(got_w, SufficientStats) and isinstance(got_c, RatioStats)
        _close(got_w.to_dict(), want["watch_minutes"][arm])
        _close(got_c.to_dict(), want["ctr"][arm])
    assert readout.exposures == exposures.groupby("arm")["user_id"].nunique().to_dict()
    cohorts = {}
    for (arm, day), n in cohort_sizes(exposures, closed_day).items():
        cohorts.setdefault(day, {})[arm] = n
    assert readout.cohorts == cohorts and readout.closed_day == closed_day


def test_duckdb_sums_equal_the_collectors(tmp_path):
    import ibis

    ud, exposures = _world()
    con = ibis.duckdb.connect(str(tmp_path / "wh.duckdb"))
    con.con.register("ud_frame", ud)
    con.con.execute("CREATE TABLE user_days AS SELECT * FROM ud_frame")
    added = record_exposures(con, "exp-1", exposures.itertuples(index=False, name=None))
    assert added == len(exposures)
    # a resend (the router retries) adds nothing and keeps each first day
    assert record_exposures(con, "exp-1", [(0, exposures.iloc[0]["arm"], 13)]) == 0
    for closed_day in (8, 10, 13):
        _check_against_the_collector_path(con, ud, exposures, closed_day)
    # another experiment's exposures are not mixed in
    record_exposures(con, "exp-2", [(1, "control", 7), (2, "other", 7)])
    _check_against_the_collector_path(con, ud, exposures, 13)


def test_no_exposure_yet_is_an_empty_readout(tmp_path):
    import ibis

    con = ibis.duckdb.connect()
    con.con.execute("CREATE TABLE user_days (user_id INTEGER, day INTEGER, minutes DOUBLE)")
    record_exposures(con, "other", [(1, "control", 0)])
    r = warehouse_readout(con, "exp-1", [WATCH], 5, at=0.0)
    assert r.stats == {} and r.exposures == {} and r.cohorts == {}


@pytest.mark.parametrize("sql,fragment", [
    ("", "empty"),
    ("SELECT user_id, day, minutes AS value FROM user_days; DROP TABLE user_days", "one query"),
    ("DELETE FROM user_days", "must be a SELECT"),
    ("INSERT INTO t SELECT 1", "must be a SELECT"),
    ("SELECT user_id INTO copy FROM user_days", "only read"),
    ("SELECT FROM WHERE (", "does not parse"),
])
def test_metric_sql_is_one_read_only_query(sql, fragment):
    with pytest.raises(WarehouseError, match=fragment):
        check_metric_sql("m", sql)


def test_a_metric_without_its_columns_is_named(tmp_path):
    import ibis

    con = ibis.duckdb.connect()
    con.con.execute("CREATE TABLE user_days (user_id INTEGER, day INTEGER, minutes DOUBLE)")
    record_exposures(con, "exp-1", [(1, "control", 0)])
    bad = WarehouseMetric("watch", "SELECT user_id, day, minutes FROM user_days")
    with pytest.raises(WarehouseError, match="missing value"):
        warehouse_readout(con, "exp-1", [bad], 3, at=0.0)


def test_postgresql_sums_equal_the_collectors():
    """The same computation in a real PostgreSQL server (Debian's, on loopback), through ibis."""
    import ibis

    from cambrian.testing.dataservers import postgres_server

    ud, exposures = _world(seed=5, users=120)
    with postgres_server() as pg:
        con = ibis.postgres.connect(host="127.0.0.1", port=pg.port, user=pg.user, password=pg.password,
                                    database=pg.database)
        try:
            con.create_table("user_days", ud)
            record_exposures(con, "exp-1", exposures.itertuples(index=False, name=None))
            _check_against_the_collector_path(con, ud, exposures, 12)
        finally:
            con.disconnect()
