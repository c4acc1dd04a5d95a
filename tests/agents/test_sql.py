import os
from pathlib import Path

import pytest

from cambrian.testing.sqlchild import evaluator, shared_namespaces
from cambrian.agents.sql import SqlRejected, SqlTool, build_database, check_statement, render_outputs


@pytest.fixture(scope="module")
def tool(tiny_world, tmp_path_factory):
    run = tmp_path_factory.mktemp("sqlrun")
    (tiny_world / "truth").mkdir(exist_ok=True)
    (tiny_world / "truth" / "secret.parquet").write_bytes(b"not for agents")
    t = SqlTool(build_database(tiny_world, run), max_rows=5, timeout_s=2.0)
    yield t
    t.close()


def test_only_log_tables_are_loaded(tool):
    tables = tool.tables()
    assert set(tables) == {"impressions", "user_days", "items", "users"}
    assert any(c.startswith("returned_next_day") for c in tables["user_days"])


def test_select_and_with_run_with_a_row_cap(tool):
    r = tool.query("SELECT user_id FROM users ORDER BY user_id")
    assert r.error is None and len(r.rows) == 5 and r.truncated
    r = tool.query("WITH c AS (SELECT click FROM impressions) SELECT AVG(click) AS ctr FROM c")
    assert r.error is None and 0 < r.rows[0][0] < 1
    assert "ctr" in r.render()


@pytest.mark.parametrize("sql", [
    "DROP TABLE impressions", "DELETE FROM impressions", "INSERT INTO users VALUES (1, 1)",
    "ATTACH 'x.db' AS x", "COPY impressions TO '/tmp/leak.csv'", "INSTALL httpfs", "LOAD httpfs",
    "SET enable_external_access = true", "PRAGMA database_list", "SELECT 1; DROP TABLE users", "",
    "CREATE TABLE t AS SELECT 1",
])
def test_writes_and_session_changes_are_rejected(tool, sql):
    r = tool.query(sql)
    assert r.error and r.error.startswith("rejected")
    with pytest.raises(SqlRejected):
        check_statement(sql)


def test_no_file_access_from_a_select(tool):
    r = tool.query("SELECT * FROM read_csv('/etc/passwd')")
    assert r.error and "rejected" not in r.error  # parsed as SELECT, refused by the locked configuration
    r = tool.query("SELECT * FROM read_parquet('truth/secret.parquet')")
    assert r.error


def test_long_queries_are_interrupted(tool):
    r = tool.query("SELECT COUNT(*) FROM range(100000000000) a")
    assert r.error and "interrupted" in r.error


def test_render_outputs_block(tool):
    res = tool.query("SELECT COUNT(*) AS n FROM items")
    text = render_outputs([("How many items?", res)])
    assert "Q: How many items?" in text and "n" in text and "80" in text
    assert render_outputs([]) == "(no analyses yet)"


def test_queries_run_in_a_contained_child_that_sees_only_the_database(tool, tiny_world):
    """The analysis SQL runs in the SQL child's sandbox (trainer/sqlworker.py): namespaces of its own, and of the
    host's files only the runtime and the database's own folder, read-only (not the world's Parquet files)."""
    assert tool.query("SELECT 1 AS one").rows == [(1,)]
    child = evaluator(tool._worker)
    assert shared_namespaces(child.pid) == []
    root = Path(f"/proc/{child.pid}/root")
    assert os.listdir(root / "input") == ["analysis.duckdb"]
    assert (tiny_world / "users.parquet").exists() and not os.path.lexists(root / str(tiny_world).lstrip("/"))
    mounts = {line.split()[4]: line.split()[5] for line in Path(f"/proc/{child.pid}/mountinfo").read_text().splitlines()}
    assert mounts["/input"].startswith("ro")


def test_a_query_past_the_memory_limit_fails_alone(tiny_world, tmp_path, monkeypatch):
    """The child's address space is bounded (CAMBRIAN_SQL_MEMORY_MB), not only DuckDB's own memory_limit, which a
    scalar function's allocation passes; the next query gets a fresh child."""
    monkeypatch.setenv("CAMBRIAN_SQL_MEMORY_MB", "512")
    t = SqlTool(build_database(tiny_world, tmp_path), timeout_s=30.0)
    try:
        r = t.query("SELECT length(repeat('xxxxxxxx', 100000000)) AS n")  # 800 MB in one value
        assert r.error and "memory limit of 512 MiB" in r.error, r.error
        assert t.query("SELECT COUNT(*) AS n FROM items").rows == [(80,)]
    finally:
        t.close()
