"""Warehouse-native metrics (online/warehouse.py): the sums the warehouse computes from the user's own SQL
equal those online/aggregate.py computes from the collector's store, on DuckDB and on a real PostgreSQL;
the collector lands its exposure log there and publishes the sums, and the analysis decides from them."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cambrian.online.aggregate import arm_statistics
from cambrian.online.warehouse import WarehouseError, WarehouseMetric, check_metric_sql, metric_sums, record_exposures
from cambrian.stats.sums import RatioStats, SufficientStats

WATCH = WarehouseMetric("watch_minutes", "SELECT user_id, day, minutes AS value FROM user_days")
CTR = WarehouseMetric("ctr", "SELECT user_id, day, clicks AS numerator, impressions AS denominator FROM user_days",
                      "ratio")

HTTP_TIMEOUT = 60  # a collector's close_day reads the warehouse: seconds on a loaded 2-core machine (5 s flaked)


def _world(seed: int = 3, users: int = 300, days: int = 14):
    """User-days with gaps (inactive days have no row), and an experiment from day 7 with a ramp step on day 9
    (phase 1) that moves some users from control to the treatment; each user's first exposure in a phase is
    their first active day in it."""
    rng = np.random.default_rng(seed)
    rows = [(u, d, float(rng.gamma(2, 10)), int(rng.poisson(2)), int(rng.poisson(8)))
            for u in range(users) for d in range(days) if rng.random() < 0.7]
    ud = pd.DataFrame(rows, columns=["user_id", "day", "minutes", "clicks", "impressions"])
    active = ud.groupby("user_id")["day"].apply(sorted).to_dict()
    exp = []
    for u in range(users):
        arm = "treatment" if rng.random() < 0.5 else "control"
        moved = "treatment" if arm == "control" and rng.random() < 0.3 else arm
        for phase, lo, hi, a in ((0, 7, 9, arm), (1, 9, days, moved)):
            seen = [d for d in active.get(u, []) if lo <= d < hi]
            if seen:
                exp.append((u, a, seen[0], phase))
    return ud, pd.DataFrame(exp, columns=["user_id", "arm", "day", "phase"])


def _close(a: dict, b: dict) -> None:
    assert set(a) == set(b), (a, b)
    for k in a:
        assert a[k] == pytest.approx(b[k], rel=1e-9, abs=1e-9), (k, a[k], b[k])


def _check_against_the_collector_path(con, ud, exposures, closed_day):
    want = arm_statistics(exposures, ud, closed_day)
    watch, ctr = metric_sums(con, "exp-1", WATCH, closed_day), metric_sums(con, "exp-1", CTR, closed_day)
    assert set(watch) == set(ctr) == {"control", "treatment"}
    for arm in ("control", "treatment"):
        assert isinstance(watch[arm], SufficientStats) and isinstance(ctr[arm], RatioStats)
        _close(watch[arm].to_dict(), want["watch_minutes"][arm])
        _close(ctr[arm].to_dict(), want["ctr"][arm])


def test_duckdb_sums_equal_the_collectors(tmp_path):
    import ibis

    ud, exposures = _world()
    con = ibis.duckdb.connect(str(tmp_path / "wh.duckdb"))
    con.con.register("ud_frame", ud)
    con.con.execute("CREATE TABLE user_days AS SELECT * FROM ud_frame")
    added = record_exposures(con, "exp-1", exposures.itertuples(index=False, name=None))
    assert added == len(exposures)
    # a resend (the router retries) adds nothing and keeps each first day
    first = exposures.iloc[0]
    assert record_exposures(con, "exp-1", [(first["user_id"], first["arm"], 13, first["phase"])]) == 0
    for closed_day in (7, 8, 9, 10, 13):
        _check_against_the_collector_path(con, ud, exposures, closed_day)
    # another experiment's exposures are not mixed in
    record_exposures(con, "exp-2", [(1, "control", 7), (2, "other", 7)])
    _check_against_the_collector_path(con, ud, exposures, 13)


def test_an_exposure_table_from_before_phases_gets_the_column_and_reads_as_phase_0(tmp_path):
    import ibis

    ud, exposures = _world(seed=4, users=80)
    con = ibis.duckdb.connect(str(tmp_path / "wh.duckdb"))
    con.con.register("ud_frame", ud)
    con.con.execute("CREATE TABLE user_days AS SELECT * FROM ud_frame")
    con.con.execute("CREATE TABLE cambrian_exposures (experiment VARCHAR, user_id VARCHAR, arm VARCHAR, day BIGINT)")
    old = exposures[exposures["phase"] == 0]
    con.con.executemany("INSERT INTO cambrian_exposures VALUES ('exp-1', ?, ?, ?)",
                        [(str(u), a, int(d)) for u, a, d in old[["user_id", "arm", "day"]].itertuples(index=False)])
    _check_against_the_collector_path(con, ud, old.drop(columns="phase"), 8)  # read as one phase, unmigrated
    new = exposures[exposures["phase"] == 1]
    assert record_exposures(con, "exp-1", new.itertuples(index=False, name=None)) == len(new)
    _check_against_the_collector_path(con, ud, exposures, 12)  # the old rows are phase 0, the new phase 1


def test_no_exposure_yet_gives_no_sums():
    import ibis

    con = ibis.duckdb.connect()
    con.con.execute("CREATE TABLE user_days (user_id INTEGER, day INTEGER, minutes DOUBLE)")
    record_exposures(con, "other", [(1, "control", 0)])
    assert metric_sums(con, "exp-1", WATCH, 5) == {}


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
        metric_sums(con, "exp-1", bad, 3)


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


def test_the_collector_publishes_sql_metrics_from_postgresql_and_the_analysis_decides(tmp_path, monkeypatch):
    """The whole path on a real PostgreSQL: the product's own event table there, the collector (real app)
    landing its exposure log at the day's close and publishing the SQL metrics' per-arm sums in its Prometheus
    export, and the operator's readout analysis promoting the treatment that watches more."""
    from datetime import datetime, timedelta, timezone

    import httpx
    import ibis

    from cambrian.online.collector import Collector, Store
    from cambrian.online.runner import BackgroundApp
    from cambrian.operator import api
    from cambrian.operator.reconcile import readout as RD
    from cambrian.testing.dataservers import postgres_server

    rng = np.random.default_rng(11)
    today = 20_000
    users = {"control": range(0, 1000), "t": range(1000, 2000)}
    rows = []
    for arm, ids in users.items():
        for u in ids:
            base = rng.gamma(4, 5)
            for day in range(today - 4, today + 1):
                lift = 1.3 if arm == "t" and day >= today else 1.0
                shown = int(rng.poisson(60)) + 1
                rows.append((u, day, float(base * lift * rng.lognormal(0, 0.3)), int(rng.binomial(shown, 0.02)), shown))
    metrics = [WarehouseMetric("watch_sql", "SELECT user_id, day, watch AS value FROM product.events"),
               WarehouseMetric("hate_sql", "SELECT user_id, day, hates AS numerator, shown AS denominator "
                                           "FROM product.events", "ratio")]
    with postgres_server() as pg:
        con = ibis.postgres.connect(host="127.0.0.1", port=pg.port, user=pg.user, password=pg.password,
                                    database=pg.database)
        con.raw_sql("CREATE SCHEMA product").close()
        con.create_table("events", obj=pd.DataFrame(rows, columns=["user_id", "day", "watch", "hates", "shown"]),
                         database="product")
        con.disconnect()
        monkeypatch.setenv("PGPASSWORD", pg.password)  # never in the URL
        down = Collector(Store(tmp_path / "down.sqlite"), warehouse_url="postgresql://cambrian@127.0.0.1:1/x",
                         warehouse_metrics=metrics)
        with BackgroundApp(down.app()) as app:
            httpx.post(app.url + "/exposures", json={"experiment": "ro", "exposures": [[1, "control", today]]},
                       timeout=HTTP_TIMEOUT)
            r = httpx.post(app.url + "/close_day", json={"day": today}, timeout=HTTP_TIMEOUT)
            assert r.status_code == 503 and "not yet in the warehouse" in r.json()["error"]
            assert pg.password not in r.text
        with BackgroundApp(Collector(Store(tmp_path / "c.sqlite"), warehouse_url=pg.url(),
                                     warehouse_metrics=metrics).app()) as app:
            exposures = [[u, arm, today] for arm, ids in users.items() for u in ids]
            assert httpx.post(app.url + "/exposures", json={"experiment": "ro", "exposures": exposures},
                              timeout=HTTP_TIMEOUT).status_code == 200
            for _ in range(2):  # a retried close lands nothing twice
                r = httpx.post(app.url + "/close_day", json={"day": today}, timeout=HTTP_TIMEOUT)
                assert r.status_code == 200, r.text
            stats = httpx.get(app.url + "/stats", timeout=HTTP_TIMEOUT).json()["stats"]["ro"]
            scrape = httpx.get(app.url + "/metrics", timeout=HTTP_TIMEOUT).text
        check = ibis.postgres.connect(host="127.0.0.1", port=pg.port, user=pg.user, password=pg.password,
                                      database=pg.database)
        assert check.table("cambrian_exposures").count().execute() == len(exposures)
        check.disconnect()
    assert 'metric="watch_sql"' in scrape and 'metric="hate_sql"' in scrape
    assert "watch_minutes" in stats  # the built-in metrics stay beside them
    sums = {arm: {"watch_sql": SufficientStats.from_dict(stats["watch_sql"][arm]),
                  "hate_sql": RatioStats.from_dict(stats["hate_sql"][arm])} for arm in users}
    assert sums["t"]["watch_sql"].n == sums["control"]["watch_sql"].n == 1000
    spec = api.RolloutSpec.model_validate({
        "control": {"bundle": "c"}, "treatments": [{"name": "t", "hypothesisRef": {"name": "h"}, "bundle": "b"}],
        "salt": "s", "ramp": {"steps": [{"weights": [50, 50], "duration": "7d"}]},
        "metrics": {"northStar": [{"name": "watch_sql"}], "guardrails": [{"metric": "hate_sql", "margin": 0.5}]},
        "statistics": {"minSamplePerArm": 500, "sequential": "msprt"}, "decisionPolicy": "auto"})
    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    st = api.RolloutStatus(phase="Running", started_at=t0, step_history=[t0])
    a = RD.analyse(spec, st, sums, t0 + timedelta(days=1), exposures={"control": 1000, "t": 1000})
    assert a.outcome == "promote" and a.winner == "t", a.reason


@pytest.mark.parametrize("text,fragment", [
    ("[]", "non-empty list"),
    ("- {name: a}", "give name, sql"),
    ("- {name: a, sql: 'SELECT user_id, day, x AS value FROM t', color: red}", "give name, sql"),
    ("- {name: 'bad name', sql: 'SELECT 1'}", "metrics[0].name"),
    ("- {name: a, sql: 'SELECT user_id, day, x AS value FROM t'}\n- {name: a, sql: 'SELECT 1'}", "metrics[1].name"),
    ("- {name: a, kind: median, sql: 'SELECT 1'}", "kind must be mean or ratio"),
    ("- {name: a, sql: 'DELETE FROM t'}", "must be a SELECT"),
])
def test_a_bad_metrics_file_is_refused_naming_the_entry(tmp_path, text, fragment):
    from cambrian.online.warehouse import load_metrics

    path = tmp_path / "metrics.yaml"
    path.write_text(text)
    with pytest.raises(WarehouseError, match=fragment.replace("[", r"\[").replace("]", r"\]")):
        load_metrics(path)


def test_the_collector_cli_refuses_metrics_without_a_warehouse(tmp_path):
    import subprocess
    import sys

    (tmp_path / "m.yaml").write_text("- {name: a, sql: 'SELECT user_id, day, x AS value FROM t'}\n")
    r = subprocess.run([sys.executable, "-m", "cambrian.online.cli", "collect", "--db", str(tmp_path / "c.sqlite"),
                        "--warehouse-metrics", str(tmp_path / "m.yaml")], capture_output=True, text=True,
                       timeout=120, env={"PATH": "/usr/bin:/bin"})
    assert r.returncode == 2 and "--warehouse-url" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_simulated_users_write_their_days_to_the_warehouse_and_the_collector_decides_from_its_sql(arm_servers,
                                                                                                   tmp_path):
    """Local mode's warehouse path with the real world, router and collector: each simulated day's rows land in
    the product's own table (sim_user_days) before the day closes, the collector computes a SQL metric over
    that table joined to the exposures it landed, and its sums equal its own watch_minutes; a day sent again
    (the driver replays it after a restart) lands nothing twice."""
    import duckdb
    import httpx

    from cambrian.online.collector import Collector, Store
    from cambrian.online.router import Router, RouterConfig
    from cambrian.online.runner import BackgroundApp
    from cambrian.online.traffic import TrafficDriver
    from cambrian.online.warehouse import Warehouse
    from cambrian.world.params import WorldParams
    from cambrian.world.sim import World

    metrics = tmp_path / "metrics.yaml"
    metrics.write_text("- {name: watch_sql, sql: 'SELECT user_id, day, minutes AS value FROM sim_user_days'}\n"
                       "- {name: ctr_sql, kind: ratio, sql: 'SELECT user_id, day, clicks AS numerator, "
                       "impressions AS denominator FROM sim_user_days'}\n")
    wh = Warehouse.checked(f"duckdb:///{tmp_path / 'wh.duckdb'}", metrics)
    from cambrian.online.warehouse import load_metrics

    world = World(WorldParams.build(n_users=80, n_items=100, n_candidates=30, max_steps_per_day=12), seed=5)
    landed = []

    def sink(rows):
        landed.append(rows)
        wh.write_days(rows, "t")

    store = Store(tmp_path / "c.sqlite")
    collector = Collector(store, warehouse_url=wh.url, warehouse_metrics=load_metrics(metrics),
                          warehouse_rollout_table=wh.events_table)
    with BackgroundApp(collector.app()) as coll:
        cfg = RouterConfig.from_dict({"experiment": "t", "collector": coll.url, "arms": [
            {"name": "control", "url": arm_servers["control"].url, "weight": 50, "control": True},
            {"name": "treatment", "url": arm_servers["treatment"].url, "weight": 50}]})
        with BackgroundApp.of(Router(cfg)) as router:
            driver = TrafficDriver(world, router.url, coll.url, router_admin_url=router.admin_url, run_id="wh",
                                   sink=sink)
            for _ in range(3):
                driver.run_day()
            driver.close()
            stats = httpx.get(coll.url + "/stats", timeout=HTTP_TIMEOUT).json()["stats"]["t"]
    assert wh.write_days(landed[-1], "t") == 0  # a replayed day
    ud, _ = store.frames()
    with duckdb.connect(str(tmp_path / "wh.duckdb"), read_only=True) as con:
        days = con.execute("SELECT day, COUNT(*) FROM sim_user_days GROUP BY day ORDER BY day").fetchall()
    assert days == [(d, int((ud["day"] == d).sum())) for d in sorted(ud["day"].unique())]
    assert stats["watch_sql"]["treatment"]["n"] > 0
    for arm in ("control", "treatment"):
        _close(stats["watch_sql"][arm], stats["watch_minutes"][arm])
        _close(stats["ctr_sql"][arm], stats["ctr"][arm])


def test_simulated_days_from_before_rollout_keys_are_read_by_no_rollout_and_each_lands_its_own(tmp_path):
    """A sim_user_days table written before days were keyed by rollout gets the column; its rows (whose rollout
    is unknown) are read by none, and a rollout's own day lands beside them and is what its metric reads."""
    import ibis

    from cambrian.online.warehouse import record_user_days

    con = ibis.duckdb.connect(str(tmp_path / "wh.duckdb"))
    con.con.execute("CREATE TABLE sim_user_days (user_id BIGINT, day BIGINT, active BIGINT, sessions BIGINT, "
                    "impressions BIGINT, clicks BIGINT, minutes DOUBLE, likes BIGINT, hates BIGINT)")
    con.con.execute("INSERT INTO sim_user_days VALUES (1, 5, 1, 1, 8, 2, 100.0, 0, 0), (2, 5, 1, 1, 8, 2, 100.0, 0, 0)")
    day = pd.DataFrame({"user_id": [1, 2], "day": [5, 5], "active": 1, "sessions": 1, "impressions": 8, "clicks": 1,
                        "minutes": [3.0, 5.0], "likes": 0, "hates": 0})
    assert record_user_days(con, day, "ra") == 2
    assert record_user_days(con, day, "ra") == 0  # played again after a restart
    record_exposures(con, "ra", [(1, "control", 5), (2, "t", 5)])
    watch = WarehouseMetric("w", "SELECT user_id, day, minutes AS value FROM sim_user_days")
    sums = metric_sums(con, "ra", watch, 5, rollout_table="sim_user_days")
    assert {arm: s.sum_y for arm, s in sums.items()} == {"control": 3.0, "t": 5.0}


@pytest.mark.prometheus
def test_two_local_rollouts_sharing_a_warehouse_each_read_their_own_simulated_users(arm_servers, tmp_path):
    """Local mode with two Rollouts on one DuckDB warehouse, as the local platform runs them (each rollout's
    environment starts its collector, its simulated users' days land through its sink): both worlds start on
    the same day with the same user ids, yet each rollout's SQL metrics equal its own collector's built-in
    ones, read from its own users' rows; a day played again after a restart lands nothing twice."""
    import duckdb
    import httpx

    from cambrian.online.router import Router, RouterConfig
    from cambrian.online.runner import BackgroundApp
    from cambrian.online.traffic import TrafficDriver
    from cambrian.online.warehouse import Warehouse
    from cambrian.operator.platform.local import _warehouse_sink
    from cambrian.operator.platform.local_env import RolloutEnv
    from cambrian.world.params import WorldParams
    from cambrian.world.sim import World

    metrics = tmp_path / "metrics.yaml"
    metrics.write_text("- {name: watch_sql, sql: 'SELECT user_id, day, minutes AS value FROM sim_user_days'}\n"
                       "- {name: ctr_sql, kind: ratio, sql: 'SELECT s.user_id, s.day, s.clicks AS numerator, "
                       "s.impressions AS denominator FROM sim_user_days AS s'}\n")
    wh = Warehouse.checked(f"duckdb:///{tmp_path / 'wh.duckdb'}", metrics)
    params = WorldParams.build(n_users=80, n_items=100, n_candidates=30, max_steps_per_day=12)
    names, envs, routers, drivers, last = ("ra", "rb"), {}, {}, {}, {}

    def sink_of(env):
        platform_sink = _warehouse_sink(env)  # write_days keyed as the local platform keys it

        def sink(rows):
            last[env.name] = rows
            platform_sink(rows)
        return sink

    try:
        for name, arms in zip(names, (("control", "treatment"), ("control", "t2"))):
            env = envs[name] = RolloutEnv(name, tmp_path / name, tmp_path, wh)
            env.start_metrics()
            cfg = RouterConfig.from_dict({"experiment": name, "collector": env.collector.url, "arms": [
                {"name": arm, "url": arm_servers[arm].url, "weight": 50, "control": arm == "control"} for arm in arms]})
            routers[name] = BackgroundApp.of(Router(cfg)).start()
            # the same world for both, as local mode gives rollouts of one Evolution: same first day, same user ids
            drivers[name] = TrafficDriver(World(params, seed=5), routers[name].url, env.collector.url, run_id=name,
                                          router_admin_url=routers[name].admin_url, sink=sink_of(env))
        for _ in range(3):  # concurrent: the two rollouts' days interleave, as the local platform plays them
            for name in names:
                drivers[name].run_day()
        stats = {name: httpx.get(envs[name].collector.url + "/stats", timeout=HTTP_TIMEOUT).json()["stats"][name]
                 for name in names}
    finally:
        for driver in drivers.values():
            driver.close()
        for router in routers.values():
            router.stop()
        for env in envs.values():
            env.stop()
    for name in names:
        assert stats[name]["watch_sql"].keys() == stats[name]["watch_minutes"].keys()
        for arm in stats[name]["watch_minutes"]:
            assert stats[name]["watch_sql"][arm]["n"] > 0
            _close(stats[name]["watch_sql"][arm], stats[name]["watch_minutes"][arm])
            _close(stats[name]["ctr_sql"][arm], stats[name]["ctr"][arm])
    with duckdb.connect(str(tmp_path / "wh.duckdb"), read_only=True) as con:
        days = con.execute("SELECT rollout, day, COUNT(*) FROM sim_user_days GROUP BY ALL ORDER BY ALL").fetchall()
    assert [(r, d) for r, d, _ in days] == [(r, d) for r in names for d in sorted({d for _, d, _ in days})]
    assert wh.write_days(last["rb"], "rb") == 0  # a replayed day


@pytest.mark.parametrize("url,fragment", [
    ("postgresql://me:hunter2@db:5432/x", "no password in the URL"),
    ("warehouse", "expected a URL"),
])
def test_a_local_warehouse_url_is_refused_before_anything_starts(url, fragment):
    from cambrian.online.warehouse import Warehouse

    with pytest.raises(WarehouseError, match=fragment) as exc:
        Warehouse.checked(url, None)
    assert "hunter2" not in str(exc.value)


def test_the_collector_lands_only_new_exposures_and_all_again_when_the_warehouse_lost_them(tmp_path):
    """Each close sends the exposures recorded since the last landing (a rowid mark in the collector's
    store), checked against the log inside the warehouse; a warehouse that lost rows gets everything again."""
    import duckdb
    import httpx

    from cambrian.online.collector import LANDED_EXPOSURES, Collector, Store
    from cambrian.online.runner import BackgroundApp

    path = tmp_path / "wh.duckdb"
    store = Store(tmp_path / "c.sqlite")

    def landed() -> list[tuple]:
        with duckdb.connect(str(path), read_only=True) as con:
            return con.execute("SELECT user_id, arm, day FROM cambrian_exposures ORDER BY user_id, arm").fetchall()

    with BackgroundApp(Collector(store, warehouse_url=f"duckdb:///{path}", warehouse_metrics=[WATCH]).app()) as app:
        def expose(rows, day):
            httpx.post(app.url + "/exposures", json={"experiment": "e", "exposures": rows},
                       timeout=HTTP_TIMEOUT).raise_for_status()
            httpx.post(app.url + "/close_day", json={"day": day}, timeout=HTTP_TIMEOUT).raise_for_status()

        with duckdb.connect(str(path)) as con:  # the product's own table the metric reads
            con.execute("CREATE TABLE user_days (user_id BIGINT, day BIGINT, minutes DOUBLE)")
        expose([[1, "control", 5], [2, "t", 5]], 5)
        assert landed() == [("1", "control", 5), ("2", "t", 5)]
        expose([[2, "t", 6], [3, "control", 6]], 6)  # a repeat and a new user
        assert landed() == [("1", "control", 5), ("2", "t", 5), ("3", "control", 6)]
        mark = store.get_meta(LANDED_EXPOSURES, 0)
        assert mark > 0 and store.exposures_after(mark)[0].empty  # nothing left to send
        with duckdb.connect(str(path)) as con:
            con.execute("DELETE FROM cambrian_exposures WHERE user_id = '1'")
        expose([], 7)
        assert landed() == [("1", "control", 5), ("2", "t", 5), ("3", "control", 6)]  # healed, nothing doubled


def test_a_closed_day_is_published_only_with_its_warehouse_metrics(tmp_path, monkeypatch):
    """While the warehouse computes a newly closed day's SQL metrics, a scrape still reads the day before, whole;
    the new day appears with its SQL metrics in one swap. Before, the store published the new closed day at once,
    without them, and a readout at that moment decided on missing data (at the last look: inconclusive)."""
    import duckdb
    import httpx

    from cambrian.online.collector import Collector, Store
    from cambrian.online.runner import BackgroundApp

    path = tmp_path / "wh.duckdb"
    store = Store(tmp_path / "c.sqlite")
    collector = Collector(store, warehouse_url=f"duckdb:///{path}", warehouse_metrics=[WATCH])
    seen_while_landing = []
    land = Collector._land

    def landing(self, day):
        seen_while_landing.append((self.store.snapshot[0], sorted(self.store.snapshot[1].get("e", {}))))
        land(self, day)

    monkeypatch.setattr(Collector, "_land", landing)
    with duckdb.connect(str(path)) as con:
        con.execute("CREATE TABLE user_days (user_id BIGINT, day BIGINT, minutes DOUBLE)")
        con.execute("INSERT INTO user_days VALUES (1, 5, 3.0), (2, 5, 4.0), (1, 6, 1.0)")
    with BackgroundApp(collector.app()) as app:
        for day in (5, 6):
            httpx.post(app.url + "/exposures", json={"experiment": "e", "exposures": [[1, "control", 5], [2, "t", 5]]},
                       timeout=HTTP_TIMEOUT).raise_for_status()
            httpx.post(app.url + "/close_day", json={"day": day}, timeout=HTTP_TIMEOUT).raise_for_status()
            closed, stats, _ = store.snapshot
            assert closed == day and WATCH.name in stats["e"]  # published together
    # during each landing a scrape read the previous closed day (with its SQL metric once there was one)
    assert [c for c, _ in seen_while_landing] == [-1, 5]
    assert WATCH.name in seen_while_landing[1][1]


@pytest.mark.parametrize("sql, status, fragment", [
    ("SELECT '1' AS user_id, 5 AS day, length(content) AS value FROM read_text('/etc/passwd')", 422,
     "file system operations are disabled"),
    ("SELECT user_id, day, nextval('s') AS value FROM user_days", 422, "read-only mode"),
    ("SELECT 1 AS user_id, 5 AS day, count(*) AS value FROM range(30000000000)", 422,
     "metric m: its sql ran past its time limit of 1 s"),
])
def test_the_collector_runs_metric_sql_read_only_without_file_access_and_within_its_time_limit(
        tmp_path, monkeypatch, sql, status, fragment):
    """The metric SQL is only checked for its shape: the connection it runs on is what refuses a file read or a
    write, and the time limit (the collector's environment) what stops a query that would run for minutes."""
    import time

    import duckdb
    import httpx

    from cambrian.online.collector import Collector, Store
    from cambrian.online.runner import BackgroundApp

    monkeypatch.setenv("CAMBRIAN_WAREHOUSE_SQL_SECONDS", "1")
    path = tmp_path / "wh.duckdb"
    with duckdb.connect(str(path)) as con:
        con.execute("CREATE TABLE user_days (user_id BIGINT, day BIGINT, minutes DOUBLE); "
                    "INSERT INTO user_days VALUES (1, 5, 1.0); CREATE SEQUENCE s")
    collector = Collector(Store(tmp_path / "c.sqlite"), warehouse_url=f"duckdb:///{path}",
                          warehouse_metrics=[WarehouseMetric("m", sql)])
    with BackgroundApp(collector.app()) as app:
        httpx.post(app.url + "/exposures", json={"experiment": "e", "exposures": [[1, "control", 5]]},
                   timeout=HTTP_TIMEOUT).raise_for_status()
        started = time.monotonic()
        reply = httpx.post(app.url + "/close_day", json={"day": 5}, timeout=HTTP_TIMEOUT)
        elapsed = time.monotonic() - started
    assert reply.status_code == status and fragment in reply.text, reply.text
    assert elapsed < 30
    with duckdb.connect(str(path), read_only=True) as con:
        assert con.execute("SELECT last_value FROM duckdb_sequences() WHERE sequence_name = 's'").fetchone()[0] is None
        assert con.execute("SELECT count(*) FROM cambrian_exposures").fetchone()[0] == 1  # the landing still wrote


def test_a_restarted_collector_shows_what_it_showed_before_with_its_warehouse_metrics(tmp_path, monkeypatch):
    """A restart republishes the last published day with its SQL metrics (kept in the store's file), and a closed
    day whose warehouse landing had not finished stays unpublished until the /close_day retry lands it. Before, a
    restart recomputed the closed day from the store alone: its SQL metrics were missing until the next landing,
    and a readout in between decided on missing data."""
    import duckdb
    import httpx

    from cambrian.online.collector import Collector, Store
    from cambrian.online.runner import BackgroundApp

    path, db = tmp_path / "wh.duckdb", tmp_path / "c.sqlite"
    url = f"duckdb:///{path}"
    with duckdb.connect(str(path)) as con:
        con.execute("CREATE TABLE user_days (user_id BIGINT, day BIGINT, minutes DOUBLE)")
        con.execute("INSERT INTO user_days VALUES (1, 5, 3.0), (2, 5, 4.0), (1, 6, 1.0)")
    store = Store(db)
    with BackgroundApp(Collector(store, warehouse_url=url, warehouse_metrics=[WATCH]).app()) as app:
        httpx.post(app.url + "/exposures", json={"experiment": "e", "exposures": [[1, "control", 5], [2, "t", 5]]},
                   timeout=HTTP_TIMEOUT).raise_for_status()
        httpx.post(app.url + "/close_day", json={"day": 5}, timeout=HTTP_TIMEOUT).raise_for_status()
    before = store.snapshot
    store.close()

    restarted = Store(db)  # the process restarts
    assert restarted.snapshot[0] == 5 and restarted.snapshot[1] == before[1]  # SQL metric included, same sums
    assert WATCH.name in restarted.snapshot[1]["e"]

    # closing day 6 fails in the warehouse (the process dies there): a restart keeps showing day 5, whole
    def down(self, day):
        from cambrian.online.warehouse import WarehouseUnavailable
        raise WarehouseUnavailable("down")

    monkeypatch.setattr(Collector, "_land", down)
    with BackgroundApp(Collector(restarted, warehouse_url=url, warehouse_metrics=[WATCH]).app()) as app:
        assert httpx.post(app.url + "/close_day", json={"day": 6}, timeout=HTTP_TIMEOUT).status_code == 503
    restarted.close()
    monkeypatch.undo()
    again = Store(db)
    assert again.snapshot[0] == 5 and again.snapshot[1] == before[1]
    with BackgroundApp(Collector(again, warehouse_url=url, warehouse_metrics=[WATCH]).app()) as app:
        httpx.post(app.url + "/close_day", json={"day": 6}, timeout=HTTP_TIMEOUT).raise_for_status()  # the retry
    assert again.snapshot[0] == 6 and WATCH.name in again.snapshot[1]["e"]
    again.close()
    assert Store(db).snapshot[0] == 6
