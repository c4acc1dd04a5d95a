"""`run_sql_query` for the reward persona: read-only analysis SQL over the world's logs (DuckDB).

Safety, in layers:
- the logs are copied once into a DuckDB file in a folder of its own in the run directory;
- the queries run in the contained SQL child (trainer/sqlworker.py: bubblewrap's namespaces, no network, a
  read-only view of only the Python runtime and that folder, the seccomp filter, the address-space limit of
  CAMBRIAN_SQL_MEMORY_MB and one thread), which opens the file read-only with external access off and its
  configuration locked, so a query cannot read other files (read_csv('/etc/...')), attach databases or load
  extensions; this process never opens the database;
- only single SELECT / WITH statements pass (DuckDB's own parser decides the statement type);
- results are capped in rows and characters, and a query past its time limit has its child's whole tree killed
  (the next query starts a fresh one).
The hidden simulator state (`truth/`) is never loaded.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, replace
from pathlib import Path

import duckdb

from cambrian.sqllimits import SqlLimitExceeded, SqlLimits
from cambrian.trainer.sqlworker import SqlError, SqlWorker

LOG_TABLES = ("impressions", "user_days", "items", "users")
DB_FOLDER = "analysis"  # the SQL child sees this folder alone (read-only): nothing else of the run directory
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
    """Copy the log tables (never truth/) into RUN_DIR/analysis/analysis.duckdb once; returns its path."""
    data_dir, folder = Path(data_dir), Path(run_dir) / DB_FOLDER
    db = folder / DB_FILE
    if db.exists():
        return db
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / (DB_FILE + ".tmp")
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
    """Queries over one analysis database, in a contained child (one query at a time)."""

    def __init__(self, db_path: str | Path, max_rows: int = 50, timeout_s: float = 10.0, max_chars: int = 2000):
        self.db_path = Path(db_path)
        self.max_rows = max_rows
        self.timeout_s = timeout_s
        self.max_chars = max_chars
        # the trusted side's limits (its environment), with this tool's time limit per query
        self.limits = replace(SqlLimits.from_env(), seconds=timeout_s, row_seconds=0.0)
        self._worker: SqlWorker | None = None
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            if self._worker is not None:
                self._worker.close()
                self._worker = None

    def _run(self, sql: str, max_rows: int) -> tuple[list[str], list[tuple]]:
        """In the child, started on first use and again after one past a limit (which killed it)."""
        with self._lock:
            if self._worker is None or self._worker.closed:
                self._worker = SqlWorker(self.limits, self.db_path)
            return self._worker.query(sql, max_rows)

    def tables(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        _, rows = self._run("SELECT table_name, column_name || ' ' || data_type FROM information_schema.columns "
                            "ORDER BY table_name, ordinal_position", 1 << 20)
        for name, column in rows:
            out.setdefault(name, []).append(column)
        return out

    def query(self, sql: str) -> SqlResult:
        try:
            text = check_statement(sql)
        except SqlRejected as exc:
            return SqlResult(sql, [], [], False, error=f"rejected: {exc}")
        try:
            cols, rows = self._run(text, self.max_rows)
        except SqlLimitExceeded as exc:
            reason = f"interrupted after {self.timeout_s:g}s" if "time limit" in str(exc) else str(exc)
            return SqlResult(sql, [], [], False, error=reason)
        except SqlError as exc:
            return SqlResult(sql, [], [], False, error=str(exc)[:300])
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
