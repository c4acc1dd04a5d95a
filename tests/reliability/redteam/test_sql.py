"""Reward SQL: subqueries in every spelling (SELECT, FROM-first, VALUES, TABLE, SHOW, PIVOT, EXISTS), table
functions that read files, session functions, windows and aggregates, and text that closes the expression it
is embedded in. Checked on DuckDB's parse tree; an accepted expression is bound as an expression. Labels that
come out NULL fail the gate. These fail in the trusted process before any sandbox starts."""

import pytest

from attacks import run_attack

BAD = {
    "select-subquery": "click + (SELECT 1)",
    "from-first": "(FROM read_parquet('/data/truth/*.parquet') LIMIT 1)",
    "values": "click IN (VALUES (1))",
    "table": "click IN (TABLE impressions)",
    "show": "(SHOW tables)",
    "pivot": "(PIVOT impressions ON click USING count(*))",
    "exists": "CASE WHEN EXISTS (FROM impressions) THEN 1.0 ELSE 0.0 END",
    "read-text": "length(read_text('/etc/passwd'))",
    "setting": "length(current_setting('home_directory'))",
    "window": "avg(click) OVER ()",
    "aggregate": "avg(click)",
    "cast-breakout": "click) AS DOUBLE), (SELECT 1",
    "statement": "1; DROP TABLE impressions",
    "two-expressions": "click, 1",
    "unknown-column": "secret_label",
    "null-label": "CASE WHEN click = 1 THEN 1.0 END",
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_hostile_reward_sql_fails_the_gate(path, tiny_world, tmp_path, name):
    v = run_attack(path, tiny_world, tmp_path, {"component": "reward", "patch": {"label": BAD[name]}})
    assert not v.ok and v.stage == "reward_sql", (v.stage, v.reason)
    assert v.exit_code == 3
