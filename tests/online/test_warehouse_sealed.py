"""A warehouse metric's SQL on a real PostgreSQL cannot change the session it runs in (online/warehouse.py's
_sealed): a SELECT may call set_config, take a session advisory lock or write through nextval() once its
transaction is writable; nothing it does outlives the metric, on a role that is allowed all of it (the test
server's superuser), so read-only-ness does not rest on the role."""

from __future__ import annotations

import time

import psycopg
import pytest

from cambrian.online.warehouse import WarehouseError, WarehouseMetric, _sql, connect, metric_sums, record_exposures

EVENTS = "SELECT user_id, day, value FROM events"
# each hostile part runs with the metric's rows: a CTE (volatile, so PostgreSQL evaluates it once per statement)
ATTACKS = {
    "writable": "set_config('default_transaction_read_only', 'off', false), "
                "CASE WHEN current_setting('transaction_read_only') = 'off' THEN nextval('seq') END",
    "no_time_limit": "set_config('statement_timeout', '0', false)",
    "search_path": "set_config('search_path', 'decoy', false)",
    "work_mem": "set_config('work_mem', '4GB', false)",
    "advisory_lock": "pg_advisory_lock(42)",
    "large_object": "lo_create(0)",  # PostgreSQL 15 allows it in a read-only transaction
    "notify": "pg_notify('cambrian', 'hello')",
    "role": "set_config('role', 'pg_read_all_data', false)",
    "read_write_now": "set_config('transaction_read_only', 'off', true)",
}


def _admin(pg):
    import ibis

    return ibis.postgres.connect(host="127.0.0.1", port=pg.port, user=pg.user, password=pg.password,
                                 database=pg.database)


@pytest.fixture(scope="module")
def pg():
    from cambrian.testing.dataservers import postgres_server

    with postgres_server() as server:
        admin = _admin(server)
        for sql in ("CREATE TABLE events (user_id BIGINT, day BIGINT, value DOUBLE PRECISION)",
                    "INSERT INTO events SELECT u, d, u + d FROM generate_series(1, 20) u, generate_series(3, 6) d",
                    "CREATE SEQUENCE seq", "CREATE SCHEMA decoy"):
            admin.raw_sql(sql).close()
        record_exposures(admin, "e", [(u, "control" if u % 2 else "t", 5) for u in range(1, 21)])
        admin.disconnect()
        yield server


@pytest.fixture
def metrics_con(pg, monkeypatch):
    """The collector's metrics connection (warehouse.connect, password from the environment)."""
    admin = _admin(pg)  # each test from a clean warehouse, whatever the one before left there
    for sql in ("ALTER SEQUENCE seq RESTART", "SELECT lo_unlink(oid) FROM pg_largeobject_metadata"):
        admin.raw_sql(sql).close()
    admin.disconnect()
    monkeypatch.setenv("PGPASSWORD", pg.password)
    monkeypatch.setenv("CAMBRIAN_WAREHOUSE_SQL_SECONDS", "1")
    con = connect(pg.url())
    yield con
    con.disconnect()


def _session(con) -> dict[str, str]:
    cursor = con.raw_sql("SELECT name, setting FROM pg_settings")
    try:
        return dict(cursor.fetchall())
    finally:
        cursor.close()


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_nothing_a_metric_query_sets_outlives_it(pg, metrics_con, attack):
    """Each attack in a metric computed on the collector's connection: afterwards every setting of that session
    is what it was, no advisory lock is held, the sequence never moved, and the next metric on the same
    connection gives what a fresh connection gives."""
    honest = WarehouseMetric("honest", EVENTS)
    expected = metric_sums(metrics_con, "e", honest, 6)
    before = _session(metrics_con)
    listener = psycopg.connect(host="127.0.0.1", port=pg.port, user=pg.user, password=pg.password,
                               dbname=pg.database, autocommit=True)
    listener.execute("LISTEN cambrian")
    hostile = WarehouseMetric("hostile", f"WITH s AS (SELECT {ATTACKS[attack]}) {EVENTS} CROSS JOIN s")
    try:
        metric_sums(metrics_con, "e", hostile, 6)
    except Exception as exc:  # noqa: BLE001 - refused is fine (read_write_now must be); what is left matters
        assert attack == "read_write_now", exc
    after = _session(metrics_con)
    assert {k: (before[k], after.get(k)) for k in before if after.get(k) != before[k]} == {}
    admin = _admin(pg)
    try:
        assert _sql(admin, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'", fetch=True) == 0
        assert _sql(admin, "SELECT is_called FROM seq", fetch=True) is False  # nextval never ran
        assert _sql(admin, "SELECT count(*) FROM pg_largeobject_metadata", fetch=True) == 0
        assert [n.payload for n in listener.notifies(timeout=0.2)] == []
    finally:
        admin.disconnect()
        listener.close()
    assert _sql(metrics_con, "SHOW default_transaction_read_only", fetch=True) == "on"
    assert metric_sums(metrics_con, "e", honest, 6) == expected


def test_a_metric_cannot_lift_the_time_limit_for_its_own_later_statements(metrics_con):
    """The SQL runs several times for one metric (pre-period, totals, per-arm sums): a run that switches
    statement_timeout off must not let the next one sleep past the limit."""
    sql = ("WITH s AS (SELECT CASE WHEN current_setting('statement_timeout') = '0' THEN pg_sleep(2) END, "
           f"set_config('statement_timeout', '0', false)) {EVENTS} CROSS JOIN s")
    started = time.monotonic()
    try:
        metric_sums(metrics_con, "e", WarehouseMetric("sneaky", sql), 6)
    except WarehouseError:
        pass  # stopped at the limit is as good as never sleeping
    assert time.monotonic() - started < 2


def test_a_metric_past_its_time_limit_is_named(metrics_con):
    """statement_timeout stops it, reported like DuckDB's limit: the metric's own error (422 at the collector)."""
    slow = WarehouseMetric("slow", f"WITH s AS (SELECT pg_sleep(3)) {EVENTS} CROSS JOIN s")
    started = time.monotonic()
    with pytest.raises(WarehouseError, match="metric slow: its sql ran past its time limit of 1 s"):
        metric_sums(metrics_con, "e", slow, 6)
    assert time.monotonic() - started < 3
