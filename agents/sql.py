"""`run_sql_query` for the reward persona: read-only analysis SQL over the world's logs (DuckDB).

Safety, in layers:
- the logs are copied once into a DuckDB file in the run directory, which is then opened read-only;
- external access is switched off and the configuration locked, so a query cannot read other files
  (read_csv('/etc/...')), attach databases or load extensions;
- only single SELECT / WITH statements pass (DuckDB's own parser decides the statement type);
- results are capped in rows and characters, and a query is interrupted after a time limit.
The hidden simulator state (`truth/`) is never loaded.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import duckdb

from cambrian.sqllimits import watchdog

LOG_TABLES = ("impressions", "user_days", "items", "users")
DB_FILE = "analysis.duckdb"


class SqlRejected(ValueError):
    """The statement is not a single read-only query."""


@dataclass
class SqlResult:
    sql: str
    columns: list[str]
    rows: list[tuple]
    truncated: bool
    error: str | None = None

    def render(self, max_chars: int = 2000) -> str:
        if self.error:
            return f"ERROR: {self.error}"
        lines = [" | ".join(self.columns)]
        for r in self.rows:
            lines.append(" | ".join(_cell(v) for v in r))
        if self.truncated:
            lines.append("... (rows truncated)")
        text = "\n".join(lines)
        return text if len(text) <= max_chars else text[: max_chars - 20] + "\n... (output truncated)"


def _cell(v: object) -> str:
    if isinstance(v, float):
        return f"{v:.5g}"
    return str(v)


def check_statement(sql: str) -> str:
    """Return the single statement's text if it is a SELECT (WITH ... SELECT parses as SELECT)."""
    text = sql.strip().rstrip(";").strip()
    if not text:
        raise SqlRejected("empty query")
    try:
        statements = duckdb.extract_statements(text)
    except duckdb.Error as exc:
        raise SqlRejected(f"does not parse: {exc}") from None
    if len(statements) != 1:
        raise SqlRejected(f"exactly one statement allowed, got {len(statements)}")
    kind = statements[0].type
    if kind != duckdb.StatementType.SELECT:
        raise SqlRejected(f"only SELECT/WITH queries are allowed, got {kind.name}")
    first = text.split(None, 1)[0].upper()
    if first not in ("SELECT", "WITH", "FROM", "("):
        raise SqlRejected(f"only SELECT/WITH queries are allowed, got one starting with {first}")
    return text


def build_database(data_dir: str | Path, run_dir: str | Path) -> Path:
    """Copy the log tables (never truth/) into RUN_DIR/analysis.duckdb once; returns its path."""
    data_dir, run_dir = Path(data_dir), Path(run_dir)
    db = run_dir / DB_FILE
    if db.exists():
        return db
    tmp = run_dir / (DB_FILE + ".tmp")
    tmp.unlink(missing_ok=True)
    con = duckdb.connect(str(tmp))
    try:
        for table in LOG_TABLES:
            f = data_dir / f"{table}.parquet"
            if f.exists():
                con.execute(f"CREATE TABLE {table} AS SELECT * FROM read_parquet(?)", [str(f)])
    finally:
        con.close()
    tmp.replace(db)  # atomic: a killed build leaves no half database behind
    return db


class SqlTool:
    """A locked-down read-only connection. One query at a time."""

    def __init__(self, db_path: str | Path, max_rows: int = 50, timeout_s: float = 10.0, max_chars: int = 2000):
        self.max_rows = max_rows
        self.timeout_s = timeout_s
        self.max_chars = max_chars
        self.con = duckdb.connect(str(db_path), read_only=True)
        self.con.execute("SET enable_external_access = false")
        self.con.execute("SET lock_configuration = true")
        self._lock = threading.Lock()

    def close(self) -> None:
        self.con.close()

    def tables(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for (name,) in self.con.execute("SELECT table_name FROM information_schema.tables ORDER BY 1").fetchall():
            cols = self.con.execute(
                "SELECT column_name || ' ' || data_type FROM information_schema.columns WHERE table_name = ? "
                "ORDER BY ordinal_position",
                [name],
            ).fetchall()
            out[name] = [c for (c,) in cols]
        return out

    def query(self, sql: str) -> SqlResult:
        try:
            text = check_statement(sql)
        except SqlRejected as exc:
            return SqlResult(sql, [], [], False, error=f"rejected: {exc}")
        with self._lock, watchdog(self.con.interrupt, self.timeout_s):
            try:
                cur = self.con.execute(f"SELECT * FROM ({text}) AS q LIMIT {self.max_rows + 1}")
                rows = cur.fetchall()
                cols = [d[0] for d in cur.description]
            except duckdb.InterruptException:
                return SqlResult(sql, [], [], False, error=f"interrupted after {self.timeout_s:g}s")
            except duckdb.Error as exc:
                return SqlResult(sql, [], [], False, error=str(exc).splitlines()[0][:300])
        return SqlResult(sql, cols, rows[: self.max_rows], len(rows) > self.max_rows)


def render_outputs(results: list[tuple[str, SqlResult]], max_chars: int = 6000) -> str:
    """The {SQL_QUERY_OUTPUT} block: each question, its SQL and the (truncated) table."""
    if not results:
        return "(no analyses yet)"
    parts = []
    for question, res in results:
        parts.append(f"Q: {question}\nSQL: {res.sql.strip()}\n{res.render()}")
    text = "\n\n".join(parts)
    return text if len(text) <= max_chars else text[-max_chars:]
