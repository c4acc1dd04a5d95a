"""Warehouse-native online metrics: per-arm sums computed inside the user's warehouse.

A metric is the user's own SQL over their own event tables, one row per user and day:

    mean:   SELECT user_id, day, value FROM ...                    Y = Σ value over the window / its days
    ratio:  SELECT user_id, day, numerator, denominator FROM ...   M = Σ numerator, D = Σ denominator

joined to the experiment's exposure log (table `cambrian_exposures`: experiment, user_id, arm, day; the
first exposure of each user to each arm, as the collector records it). The units and windows are those of
online/aggregate.py, which computes the built-in metrics from the collector's own store: a (user, arm) unit
runs from its first exposure up to the user's next first exposure to another arm or the last closed day;
the CUPED covariate is the same metric per day over the `pre_days` before the experiment's first exposure.

Everything runs as ibis expressions in the warehouse (DuckDB, PostgreSQL, and the other engines ibis
speaks): only the per-arm sums come back, so the work scales with the warehouse, not with the collector.
The collector (online/collector.py --warehouse-url --warehouse-metrics) lands its exposure log there at each
day's close, computes these sums and publishes them in its Prometheus export like its built-in metrics:
the operator reads them as it reads any metric, and CUPED, the sequential tests and the guardrails work
unchanged (the operator image needs no warehouse driver). The metric SQL is parsed (sqlglot, the parser ibis
uses): one read-only SELECT, never a second statement, and its columns are checked before it is used. On
PostgreSQL each metric runs sealed (_sealed): nothing its SQL sets (set_config, locks, ...) outlives it.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Literal, Mapping

from cambrian.errors import ConfigError, one_line
from cambrian.online.aggregate import AggregationSettings
from cambrian.sqllimits import SqlLimits, watchdog
from cambrian.stats.sums import RatioStats, SufficientStats

EXPOSURES = "cambrian_exposures"
COLUMNS = {"mean": ("user_id", "day", "value"), "ratio": ("user_id", "day", "numerator", "denominator")}
MAX_SQL_CHARS = 20_000


class WarehouseError(ConfigError):
    """A metric's SQL or the warehouse cannot give the sums (exit code 2 for a bad definition)."""


def check_metric_sql(name: str, sql: str, dialect: str | None = None):
    """One read-only query: a SELECT (or a UNION of them, with CTEs), parsed, never a second statement.
    Returns the parsed tree."""
    import sqlglot
    from sqlglot import exp

    if not isinstance(sql, str) or not sql.strip():
        raise WarehouseError(f"metric {name}: sql is empty")
    if len(sql) > MAX_SQL_CHARS:
        raise WarehouseError(f"metric {name}: sql is {len(sql)} characters; the limit is {MAX_SQL_CHARS}")
    try:
        trees = [t for t in sqlglot.parse(sql, read=dialect) if t is not None]
    except sqlglot.errors.ParseError as exc:
        raise WarehouseError(f"metric {name}: sql does not parse: {one_line(exc)}") from None
    if len(trees) != 1:
        raise WarehouseError(f"metric {name}: sql must be one query, got {len(trees)} statements")
    (tree,) = trees
    if not isinstance(tree, exp.Query):
        raise WarehouseError(f"metric {name}: sql must be a SELECT, got {tree.key.upper()}")
    writes = (exp.Insert, exp.Update, exp.Delete, exp.Create, exp.Drop, exp.Alter, exp.Command, exp.Merge, exp.Into)
    bad = next((node for node in tree.walk() if isinstance(node, writes)), None)
    if bad is not None:
        raise WarehouseError(f"metric {name}: sql must only read, found {bad.key.upper()}")
    return tree



@dataclass(frozen=True)
class WarehouseMetric:
    name: str
    sql: str
    kind: Literal["mean", "ratio"] = "mean"

    def __post_init__(self) -> None:
        if self.kind not in COLUMNS:
            raise WarehouseError(f"metric {self.name}: kind must be mean or ratio, got {self.kind!r}")
        check_metric_sql(self.name, self.sql)


def _rollout_rows(tree: Any, table: str, rollout: str) -> Any:
    """The query with each reference to `table` (rows keyed by column `rollout`: record_user_days) narrowed to
    `rollout`'s rows, under the same name: each rollout's simulated users are a population of their own, whose
    user ids and days collide with the other rollouts'."""
    from sqlglot import exp

    want = exp.to_table(table)
    for ref in list(tree.find_all(exp.Table)):
        if ref.name.lower() != want.name.lower() or (want.db and ref.db and ref.db.lower() != want.db.lower()):
            continue
        alias = ref.args.get("alias") or exp.TableAlias(this=ref.this.copy())  # quoted as the query quotes it
        bare = ref.copy()
        bare.set("alias", None)
        rows = exp.select("*").from_(bare).where(exp.column(ROLLOUT).eq(exp.Literal.string(rollout)))
        ref.replace(rows.subquery(alias.copy()))
    return tree


def _metric_table(con: Any, metric: WarehouseMetric, scope: tuple[str, str] | None = None):
    """The metric's rows as an ibis table: a temporary view of the parsed query, built by sqlglot (ibis 12's
    own `con.sql` probes the schema with calls that DuckDB 2 and sqlglot 30 no longer accept). With `scope`
    (table, rollout), that table is read for that rollout's rows only (_rollout_rows)."""
    import hashlib

    from sqlglot import exp

    dialect = getattr(con, "name", None)  # ibis' backend names are sqlglot's dialect names
    tree = check_metric_sql(metric.name, metric.sql, dialect)
    if scope is not None:
        tree = _rollout_rows(tree, *scope)
    key = f"{metric.name}\0{metric.sql}\0{scope}"
    view = "cambrian_metric_" + hashlib.sha256(key.encode()).hexdigest()[:16]
    ddl = exp.Create(this=exp.to_table(view), kind="VIEW", replace=True, expression=tree,
                     properties=exp.Properties(expressions=[exp.TemporaryProperty()]))
    try:
        if dialect == "duckdb":  # DuckDB hands back its connection itself
            con.raw_sql(ddl.sql(dialect=dialect))
        else:  # inside _sealed's transaction: the view (which runs nothing) is its only write, then it only reads
            con.con.execute(ddl.sql(dialect=dialect))
            con.con.execute("SET TRANSACTION READ ONLY")  # for good: PostgreSQL refuses READ WRITE after a query
        table = con.table(view)
    except Exception as exc:  # noqa: BLE001 - each backend raises its driver's own errors
        raise WarehouseError(f"metric {metric.name}: the warehouse refused its sql: {one_line(exc)}") from None
    missing = [c for c in COLUMNS[metric.kind] if c not in table.columns]
    if missing:
        raise WarehouseError(f"metric {metric.name}: a {metric.kind} metric's sql must return columns "
                             f"{', '.join(COLUMNS[metric.kind])}; missing {', '.join(missing)}")
    return table


def _units(exposures, closed_day: int):
    """(user_id, arm, first, end) of the current phase: online/aggregate.unit_windows as an expression."""
    import ibis

    e = exposures.filter(exposures.day <= closed_day)
    if "phase" not in e.columns:  # a log from before phases, not landed to since: one phase
        e = e.mutate(phase=ibis.literal(0, "int64"))
    e = e.filter(e.phase == e.phase.max())  # the scalar reduction runs over the filtered rows
    # one unit per user: the phase's assignment is fixed (ties broken as aggregate.unit_windows does)
    first = e.group_by("user_id").aggregate(first=e.day.min())
    e = e.join(first, (e.user_id == first.user_id) & (e.day == first["first"])).select(e.user_id, e.arm, first["first"])
    e = e.group_by(["user_id", "first"]).aggregate(arm=e.arm.min())
    return e.select("user_id", "arm", "first").mutate(end=ibis.literal(closed_day + 1))


def _per_unit(units, values, columns: tuple[str, ...], pre: tuple[int, int] | None):
    """Per unit, Σ of `columns` over the user's days in its window (w_<column>) and, with `pre`, Σ value over
    the pre-period [pre[0], pre[1]) (x_value): one join and one grouping, 0 where a user has no rows."""
    j = units.left_join(values, units.user_id == values.user_id)
    in_window = (j.day >= j["first"]) & (j.day < j.end)
    sums = {f"w_{c}": in_window.ifelse(j[c], 0.0).sum().fill_null(0.0) for c in columns}
    if pre is not None:
        sums["x_value"] = ((j.day >= pre[0]) & (j.day < pre[1])).ifelse(j["value"], 0.0).sum().fill_null(0.0)
    return j.group_by(["user_id", "arm", "first", "end", "days"]).aggregate(**sums)


def _reference(total: float, n: int) -> float:
    from cambrian.stats.sums import reference

    return reference([total / n]) if n else 0.0


def _arm_sums(con: Any, units, a: str, b: str, ref_a: float, ref_b: float) -> dict[str, dict[str, float]]:
    """Per arm: n, Σa, Σb and the second moments about the shared references (stats/sums.py's contract)."""
    da, db = units[a] - ref_a, units[b] - ref_b
    agg = units.group_by("arm").aggregate(n=units.count(), s_a=units[a].sum(), s_b=units[b].sum(),
                                          s_aa=(da * da).sum(), s_bb=(db * db).sum(), s_ab=(da * db).sum())
    return {str(r["arm"]): {k: (int(v) if k == "n" else float(v or 0.0)) for k, v in r.items() if k != "arm"}
            for r in _rows(con, agg)}


def _totals(con: Any, units, a: str, b: str) -> tuple[int, float, float]:
    row = _rows(con, units.aggregate(n=units.count(), s_a=units[a].sum(), s_b=units[b].sum()))[0]
    return int(row["n"]), float(row["s_a"] or 0.0), float(row["s_b"] or 0.0)


def metric_limits() -> SqlLimits:
    """The limits of the metrics' SQL, from the collector's environment (CAMBRIAN_WAREHOUSE_SQL_SECONDS, ...)."""
    return SqlLimits.from_env("CAMBRIAN_WAREHOUSE_SQL_", memory_mb=4096, threads=2, seconds=600.0, row_seconds=0.0)


def metric_sums(con: Any, experiment: str, metric: WarehouseMetric, closed_day: int,
                settings: AggregationSettings = AggregationSettings(), exposures_table: str = EXPOSURES,
                rollout_table: str | None = None) -> dict[str, SufficientStats | RatioStats]:
    """{arm: sums} of one metric for one experiment, computed in the warehouse, stopped past the time limit
    (metric_limits: DuckDB's statements interrupted, PostgreSQL's statement_timeout; there the whole computation
    is _sealed: nothing the metric's SQL sets outlives it). `rollout_table`: a table whose rows each belong to
    one rollout (local mode's simulated users' days), of which the metric reads the experiment's rows only."""
    seconds = metric_limits().seconds
    if getattr(con, "name", "") != "duckdb":
        try:
            with _sealed(con, seconds):
                return _metric_sums(con, experiment, metric, closed_day, settings, exposures_table, rollout_table)
        except Exception as exc:
            if getattr(exc, "sqlstate", None) == _QUERY_CANCELED:
                raise WarehouseError(f"metric {metric.name}: its sql ran past its time limit of {seconds:g} s") from None
            raise
    import duckdb

    try:
        with watchdog(con.con.interrupt, seconds):
            return _metric_sums(con, experiment, metric, closed_day, settings, exposures_table, rollout_table)
    except duckdb.InterruptException:
        raise WarehouseError(f"metric {metric.name}: its sql ran past its time limit of {seconds:g} s") from None


_QUERY_CANCELED = "57014"  # PostgreSQL's SQLSTATE for a statement stopped by statement_timeout


@contextmanager
def _sealed(con: Any, seconds: float) -> Iterator[None]:
    """One metric's computation on PostgreSQL, so that nothing its SQL sets outlives it, whatever the role allows:
    one transaction, rolled back, under SET LOCAL statement and idle timeouts (a set_config in the SQL is undone
    with it, and each statement runs in a savepoint of its own: _rows); it is read-write until the metric's
    temporary view exists (creating it runs none of the SQL), then READ ONLY for good (_metric_table). Afterwards DISCARD ALL drops what
    a transaction does not undo (session advisory locks, temporary objects, prepared statements, LISTEN) and the
    session's own settings from before the metric (connect's, ibis': pg_settings' source 'session') come back."""
    pg = con.con  # ibis' psycopg connection (autocommit): transaction() is BEGIN, a savepoint inside one
    baseline = pg.execute("SELECT name, setting FROM pg_settings WHERE source = 'session'").fetchall()
    try:
        with pg.transaction(force_rollback=True):
            pg.execute("SET TRANSACTION READ WRITE")  # connect's sessions are read-only by default
            for key in ("statement_timeout", "idle_in_transaction_session_timeout"):
                pg.execute(f"SET LOCAL {key} = {max(1, int(seconds * 1000))}")
            yield
    finally:
        if not (pg.closed or pg.broken):
            pg.execute("DISCARD ALL")
            for name, value in baseline:
                pg.execute("SELECT set_config(%s, %s, false)", (name, value))


def _rows(con: Any, expr: Any) -> list[dict[str, Any]]:
    """An expression's rows; on PostgreSQL (inside _sealed) in a savepoint rolled back after it, so one run of the
    metric's SQL cannot change the settings (statement_timeout, ...) the next one runs under."""
    if getattr(con, "name", "") == "duckdb":
        return expr.execute().to_dict("records")
    with con.con.transaction(force_rollback=True):
        return expr.execute().to_dict("records")


def _metric_sums(con: Any, experiment: str, metric: WarehouseMetric, closed_day: int,
                 settings: AggregationSettings, exposures_table: str,
                 rollout_table: str | None) -> dict[str, SufficientStats | RatioStats]:
    exp_all = con.table(exposures_table)
    exposures = exp_all.filter(exp_all.experiment == experiment)
    first_row = _rows(con, exposures.aggregate(start=exposures.day.min()))[0]
    if first_row["start"] is None or first_row["start"] != first_row["start"]:  # no exposure yet (None or NaN)
        return {}
    start = int(first_row["start"])
    units = _units(exposures, closed_day)
    units = units.mutate(days=(units.end - units["first"]).cast("float64"))
    raw = _metric_table(con, metric, (rollout_table, experiment) if rollout_table else None)
    cols = COLUMNS[metric.kind][2:]
    # ids as text on both sides: the exposure log stores them so, the user's tables may hold integers
    values = raw.select(raw.user_id.cast("string").name("user_id"), raw.day.cast("int64").name("day"),
                        *[raw[c].cast("float64").name(c) for c in cols])
    if metric.kind == "ratio":
        units = _per_unit(units, values, cols, None)
        n, s_m, s_d = _totals(con, units, "w_numerator", "w_denominator")
        refs = (_reference(s_m, n), _reference(s_d, n))
        return {arm: RatioStats(n=s["n"], sum_m=s["s_a"], sum_d=s["s_b"], sum_m2=s["s_aa"], sum_d2=s["s_bb"],
                                sum_md=s["s_ab"], ref_m=refs[0], ref_d=refs[1])
                for arm, s in _arm_sums(con, units, "w_numerator", "w_denominator", *refs).items()}
    pre_lo = start - settings.pre_days
    # the pre-period's per-day mean uses the days the metric's rows cover (a log may be shorter than pre_days)
    span = values.filter((values.day >= pre_lo) & (values.day < start))
    cover = _rows(con, span.aggregate(lo=span.day.min(), hi=span.day.max()))[0]
    pre_len = 1.0 if cover["hi"] is None or cover["hi"] != cover["hi"] else \
        float(int(cover["hi"]) - max(int(cover["lo"]), pre_lo) + 1)
    units = _per_unit(units, values, cols, (pre_lo, start))
    units = units.mutate(y=units.w_value / units.days, x=units.x_value / pre_len)
    n, s_y, s_x = _totals(con, units, "y", "x")
    ref_y, ref_x = _reference(s_y, n), _reference(s_x, n)
    return {arm: SufficientStats(n=s["n"], sum_y=s["s_a"], sum_x=s["s_b"], sum_y2=s["s_aa"], sum_x2=s["s_bb"],
                                 sum_xy=s["s_ab"], ref_y=ref_y, ref_x=ref_x)
            for arm, s in _arm_sums(con, units, "y", "x", ref_y, ref_x).items()}


class WarehouseUnavailable(RuntimeError):
    """The warehouse did not answer: like Prometheus being down, no decision is made."""


def record_exposures(con: Any, experiment: str, rows: Iterable[tuple[Any, ...]],
                     exposures_table: str = EXPOSURES) -> int:
    """Land first exposures (user_id, arm, day[, phase]) in the warehouse's exposure table, creating it (or
    its phase column) when missing; a (user, arm, phase) already there is kept with its first day, so a
    resend is harmless. Returns rows added. The check against what is there runs in the warehouse (the
    batch, staged in a temporary table, anti-joined to the log), so landing costs the batch, not the whole log."""
    import pyarrow as pa

    new = [(str(r[0]), str(r[1]), int(r[2]), int(r[3]) if len(r) > 3 else 0) for r in rows]
    if not new:
        return 0
    _ensure_table(con, exposures_table, _EXPOSURE_COLUMNS)
    batch = pa.table({"experiment": [experiment] * len(new), "user_id": [r[0] for r in new],
                      "arm": [r[1] for r in new], "day": [r[2] for r in new], "phase": [r[3] for r in new]})
    return _insert_fresh(con, exposures_table, batch, lambda staged: (
        f"SELECT n.experiment, n.user_id, n.arm, MIN(n.day) AS day, n.phase FROM {staged} AS n WHERE NOT EXISTS "
        f"(SELECT 1 FROM {_ident(exposures_table)} AS e WHERE e.experiment = n.experiment "
        "AND e.user_id = n.user_id AND e.arm = n.arm AND e.phase = n.phase) "
        "GROUP BY n.experiment, n.user_id, n.arm, n.phase"))


_EXPOSURE_COLUMNS = {"experiment": "string", "user_id": "string", "arm": "string", "day": "int64", "phase": "int64"}
_DUCKDB_TYPES = {"string": "VARCHAR", "int64": "BIGINT", "float64": "DOUBLE"}
# columns added to a table from an earlier version: numbers 0 (an exposure's phase), text NULL (a simulated day
# landed before days were keyed by rollout: no rollout reads it, each lands its own again)
_SQL_TYPES = {"int64": "BIGINT DEFAULT 0", "float64": "DOUBLE PRECISION DEFAULT 0", "string": "VARCHAR"}


def _ensure_table(con: Any, table: str, columns: Mapping[str, str]) -> None:
    """Create `table` with these columns (ibis type names) when it is missing; a table from an earlier version
    gets the columns it lacks (an exposure log from before phases: every row is phase 0)."""
    if getattr(con, "name", "") == "duckdb":  # ibis 12's DuckDB DDL calls what DuckDB 2 removed
        sql = ", ".join(f"{c} {_DUCKDB_TYPES[t]}" for c, t in columns.items())
        _sql(con, f"CREATE TABLE IF NOT EXISTS {_ident(table)} ({sql})")
    elif table not in con.list_tables():
        import ibis

        con.create_table(table, schema=ibis.schema(dict(columns)))
    have = set(con.table(table).columns)
    for c, t in columns.items():
        if c not in have:
            _sql(con, f"ALTER TABLE {_ident(table)} ADD COLUMN {_ident(c)} {_SQL_TYPES[t]}")


def _insert_fresh(con: Any, table: str, batch: Any, fresh: Any) -> int:
    """Stage `batch`, insert the rows that `fresh(staged)` (a SELECT over it, in the table's column order)
    says are not there yet, in one INSERT; returns how many. The check runs in the warehouse."""
    with _staged(con, batch) as staged:
        select = fresh(staged)
        added = int(_sql(con, f"SELECT COUNT(*) FROM ({select}) AS fresh", fetch=True))
        if added:
            _sql(con, f"INSERT INTO {_ident(table)} ({', '.join(batch.column_names)}) {select}")
    return added


@contextmanager
def _staged(con: Any, batch: Any) -> Iterator[str]:
    """Arrow rows as a temporary table of this connection, dropped afterwards; yields its quoted name."""
    import uuid

    name = f"_cambrian_staged_{uuid.uuid4().hex[:12]}"
    if getattr(con, "name", "") == "duckdb":
        con.con.register(name, batch)
        try:
            yield _ident(name)
        finally:
            con.con.unregister(name)
        return
    con.create_table(name, obj=batch, temp=True)
    try:
        yield _ident(name)
    finally:
        _sql(con, f"DROP TABLE IF EXISTS {_ident(name)}")


def _sql(con: Any, sql: str, fetch: bool = False) -> Any:
    """One statement on the backend's own connection (autocommit on every backend ibis opens); with `fetch`,
    the first column of its first row."""
    if getattr(con, "name", "") == "duckdb":
        rows = con.con.execute(sql).fetchall()  # DuckDB 2 wants every result read before the next statement
        return rows[0][0] if fetch else None
    cursor = con.raw_sql(sql)
    try:
        return cursor.fetchone()[0] if fetch else None
    finally:
        cursor.close()


def _ident(name: str) -> str:
    """A table name as a quoted identifier (rendered by sqlglot, not pasted)."""
    from sqlglot import exp

    return exp.to_table(name).sql(dialect="duckdb")


def load_metrics(path: Any) -> list[WarehouseMetric]:
    """A YAML list of {name, kind, sql} (size, depth and alias limits); ConfigError naming the entry."""
    import re

    from cambrian.trainer.config import read_structured_file

    data = read_structured_file(path)
    if not isinstance(data, list) or not data:
        raise WarehouseError(f"{path}: expected a non-empty list of metrics ({{name, kind, sql}})")
    out, seen = [], set()
    for i, m in enumerate(data):
        if not isinstance(m, dict) or set(m) - {"name", "kind", "sql"} or not {"name", "sql"} <= set(m):
            raise WarehouseError(f"{path}: metrics[{i}]: give name, sql and optionally kind (mean or ratio)")
        name = m["name"]
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,127}", name) or name in seen:
            raise WarehouseError(f"{path}: metrics[{i}].name: a unique metric name (letters, digits, _), got {name!r}")
        seen.add(name)
        out.append(WarehouseMetric(name, m["sql"] if isinstance(m["sql"], str) else "", m.get("kind", "mean")))
    return out


# ---- the collector lands its log --------------------------------------------------------------------------------

def connect(url: str, write: bool = False):
    """An ibis connection to the warehouse; the URL's password never reaches a message. Without `write` it is
    the metrics' (their SQL is only checked for its shape): it can only read, under metric_limits. DuckDB: the
    file read-only, no other file or network access, bounded memory and threads, the configuration locked;
    PostgreSQL: read-only transactions and a statement_timeout (a baseline: metric_sums seals each metric)."""
    from cambrian.trainer.sources import redact

    try:
        import ibis

        if url.startswith("duckdb://"):
            con = ibis.duckdb.connect(url.split("://", 1)[1], read_only=not write)
        else:
            con = ibis.connect(url)
        if not write:
            limits = metric_limits()
            if getattr(con, "name", "") == "duckdb":
                for key, value in limits.duckdb_config().items():  # lock_configuration last (dict order)
                    con.con.execute(f"SET {key} = '{value}'")
            else:
                _sql(con, f"SET statement_timeout = {int(limits.seconds * 1000)}")
                _sql(con, "SET default_transaction_read_only = on")
        return con
    except Exception as exc:  # noqa: BLE001 - the driver's connection error, whatever its class
        raise WarehouseUnavailable(f"warehouse {redact(url)}: cannot connect: {redact(one_line(exc))}") from None


def exposure_rows(con: Any, exposures_table: str = EXPOSURES) -> int:
    """Rows in the exposure table (0 when it does not exist yet)."""
    try:
        return int(_sql(con, f"SELECT COUNT(*) FROM {_ident(exposures_table)}", fetch=True))
    except Exception:  # noqa: BLE001 - each backend's "no such table"
        return 0


def land_collector_log(con: Any, exposures_by_experiment: Mapping[str, Iterable[tuple[Any, ...]]],
                       exposures_table: str = EXPOSURES) -> int:
    """What the collector knows at a day's close: every first exposure (a repeat adds nothing)."""
    return sum(record_exposures(con, experiment, rows, exposures_table)
               for experiment, rows in exposures_by_experiment.items())


# ---- a product's own events (local mode: the simulated users) ---------------------------------------------------

SIM_USER_DAYS = "sim_user_days"
ROLLOUT = "rollout"  # the rollout whose simulated users lived the day: each rollout's users are their own population
_DAY_COLUMNS = {"user_id": "int64", "day": "int64", "active": "int64", "sessions": "int64", "impressions": "int64",
                "clicks": "int64", "minutes": "float64", "likes": "int64", "hates": "int64"}


def record_user_days(con: Any, rows: Any, rollout: str, table: str = SIM_USER_DAYS) -> int:
    """One rollout's per-user-day event rows (online/traffic.user_day_rows' columns) into the product's own
    table, created when missing, each row keyed by `rollout`: every rollout simulates its own users from the
    same first day with the same user ids, so its metrics read its rows only (metric_sums' rollout_table).
    A (rollout, day) already there is kept as it is, like the collector's batch ids: a day the driver plays
    again after a restart lands nothing twice. One INSERT per call, so a day is all there or absent."""
    import pyarrow as pa

    frame = rows[list(_DAY_COLUMNS)].astype(_DAY_COLUMNS)
    if frame.empty:
        return 0
    frame.insert(0, ROLLOUT, str(rollout))
    _ensure_table(con, table, {ROLLOUT: "string", **_DAY_COLUMNS})
    batch = pa.Table.from_pandas(frame.reset_index(drop=True), preserve_index=False)
    columns = ", ".join(f"n.{c}" for c in batch.column_names)
    return _insert_fresh(con, table, batch, lambda staged: (
        f"SELECT {columns} FROM {staged} AS n WHERE NOT EXISTS "
        f"(SELECT 1 FROM {_ident(table)} AS e WHERE e.{ROLLOUT} = n.{ROLLOUT} AND e.day = n.day)"))


@dataclass(frozen=True)
class Warehouse:
    """Local mode's warehouse (`cambrian evolve|rollout --warehouse-url URL --warehouse-metrics FILE`): each
    rollout's collector lands its exposure log there and computes the SQL metrics of FILE there, and the
    simulated users' days land in `events_table`, the product's own event table that those metrics read:
    each rollout's rows, keyed by the rollout (its simulated users are its own)."""

    url: str
    metrics_file: Path | None  # handed to each collector, which parses it again
    events_table: str = SIM_USER_DAYS

    @classmethod
    def checked(cls, url: str, metrics_file: Any, events_table: str = SIM_USER_DAYS) -> "Warehouse":
        """Refused before anything starts: a password in the URL (it would be seen in process listings), an
        unknown scheme, a bad metrics file or table name (WarehouseError, one line)."""
        from urllib.parse import urlsplit

        parts = urlsplit(url)
        if not parts.scheme or "://" not in url:
            raise WarehouseError(f"--warehouse-url {url!r}: expected a URL such as duckdb:///PATH or "
                                 "postgresql://USER@HOST:PORT/DB")
        if parts.password:
            raise WarehouseError("--warehouse-url: no password in the URL (process listings show it); "
                                 "put it in PGPASSWORD or ~/.pgpass")
        if metrics_file is not None:
            load_metrics(metrics_file)
            metrics_file = Path(metrics_file).resolve()  # each collector runs in its own folder
        try:
            _ident(events_table)
        except Exception as exc:  # noqa: BLE001 - sqlglot's parse error
            raise WarehouseError(f"--warehouse-events-table {events_table!r}: not a table name: {one_line(exc)}") from None
        return cls(url, metrics_file, events_table)

    def collector_args(self) -> list[str]:
        return ["--warehouse-url", self.url, "--warehouse-rollout-table", self.events_table,
                *(["--warehouse-metrics", str(self.metrics_file)] if self.metrics_file is not None else [])]

    def write_days(self, rows: Any, rollout: str) -> int:
        """One simulated day's (or the pre-period's) rows of `rollout`'s users into events_table."""
        from cambrian.trainer.sources import redact

        con = connect(self.url, write=True)
        try:
            return record_user_days(con, rows, rollout, self.events_table)
        except Exception as exc:  # noqa: BLE001 - the driver's errors, whatever their class
            raise WarehouseUnavailable(f"{redact(self.url)}: {redact(one_line(exc))}") from None
        finally:
            getattr(con, "disconnect", lambda: None)()
