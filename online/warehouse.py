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
speaks): only the per-arm sums come back, so the analysis scales with the warehouse, not with this process.
They are the SufficientStats / RatioStats that the statistics read from Prometheus, so CUPED, the
sequential tests and the guardrails work unchanged. The metric SQL is parsed (sqlglot, the parser ibis
uses): one read-only SELECT, never a second statement, and its columns are checked before it is used.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Literal, Mapping

from cambrian.errors import ConfigError, one_line
from cambrian.online.aggregate import AggregationSettings
from cambrian.online.prometheus import ExperimentReadout
from cambrian.stats.sums import RatioStats, SufficientStats

EXPOSURES = "cambrian_exposures"
COLUMNS = {"mean": ("user_id", "day", "value"), "ratio": ("user_id", "day", "numerator", "denominator")}
MAX_SQL_CHARS = 20_000


class WarehouseError(ConfigError):
    """A metric's SQL or the warehouse cannot give the sums (exit code 2 for a bad definition)."""


@dataclass(frozen=True)
class WarehouseMetric:
    name: str
    sql: str
    kind: Literal["mean", "ratio"] = "mean"

    def __post_init__(self) -> None:
        if self.kind not in COLUMNS:
            raise WarehouseError(f"metric {self.name}: kind must be mean or ratio, got {self.kind!r}")
        check_metric_sql(self.name, self.sql)


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


def _metric_table(con: Any, metric: WarehouseMetric):
    """The metric's rows as an ibis table: a temporary view of the parsed query, built by sqlglot (ibis 12's
    own `con.sql` probes the schema with calls that DuckDB 2 and sqlglot 30 no longer accept)."""
    import hashlib

    from sqlglot import exp

    dialect = getattr(con, "name", None)  # ibis' backend names are sqlglot's dialect names
    tree = check_metric_sql(metric.name, metric.sql, dialect)
    view = "cambrian_metric_" + hashlib.sha256(f"{metric.name}\0{metric.sql}".encode()).hexdigest()[:16]
    ddl = exp.Create(this=exp.to_table(view), kind="VIEW", replace=True, expression=tree,
                     properties=exp.Properties(expressions=[exp.TemporaryProperty()]))
    try:
        cursor = con.raw_sql(ddl.sql(dialect=dialect))
        if dialect != "duckdb":  # DuckDB hands back its connection itself, other drivers a cursor to close
            cursor.close()
        table = con.table(view)
    except Exception as exc:  # noqa: BLE001 - each backend raises its driver's own errors
        raise WarehouseError(f"metric {metric.name}: the warehouse refused its sql: {one_line(exc)}") from None
    missing = [c for c in COLUMNS[metric.kind] if c not in table.columns]
    if missing:
        raise WarehouseError(f"metric {metric.name}: a {metric.kind} metric's sql must return columns "
                             f"{', '.join(COLUMNS[metric.kind])}; missing {', '.join(missing)}")
    return table


def _units(exposures, closed_day: int):
    """(user_id, arm, first, end): online/aggregate.unit_windows as an expression; closed days only."""
    import ibis

    e = exposures.group_by(["user_id", "arm"]).aggregate(first=exposures.day.min())
    days = e.select("user_id", "first").distinct()
    days = days.mutate(nxt=days["first"].lead().over(ibis.window(group_by=days.user_id, order_by=days["first"])))
    u = e.join(days, ["user_id", "first"]).select("user_id", "arm", "first", "nxt")
    stop = ibis.literal(closed_day + 1)
    end = ibis.least(u.nxt.fill_null(stop), stop)
    u = u.mutate(end=end).drop("nxt")
    return u.filter(u.end > u["first"])


def _window_sums(units, values, columns: tuple[str, ...], lo, hi, prefix: str):
    """Per unit, Σ of `columns` over the user's days in [lo(unit), hi(unit)); 0 where there are none."""
    j = units.join(values, units.user_id == values.user_id)
    j = j.filter((j.day >= lo(j)) & (j.day < hi(j)))
    sums = j.group_by(["user_id", "arm"]).aggregate(**{f"{prefix}{c}": j[c].sum() for c in columns})
    out = units.left_join(sums, ["user_id", "arm"]).drop("user_id_right", "arm_right")
    return out.mutate(**{f"{prefix}{c}": out[f"{prefix}{c}"].fill_null(0) for c in columns})


def _reference(total: float, n: int) -> float:
    from cambrian.stats.sums import reference

    return reference([total / n]) if n else 0.0


def _arm_sums(units, a: str, b: str, ref_a: float, ref_b: float) -> dict[str, dict[str, float]]:
    """Per arm: n, Σa, Σb and the second moments about the shared references (stats/sums.py's contract)."""
    da, db = units[a] - ref_a, units[b] - ref_b
    agg = units.group_by("arm").aggregate(n=units.count(), s_a=units[a].sum(), s_b=units[b].sum(),
                                          s_aa=(da * da).sum(), s_bb=(db * db).sum(), s_ab=(da * db).sum())
    return {str(r["arm"]): {k: (int(v) if k == "n" else float(v or 0.0)) for k, v in r.items() if k != "arm"}
            for r in agg.execute().to_dict("records")}


def _totals(units, a: str, b: str) -> tuple[int, float, float]:
    row = units.aggregate(n=units.count(), s_a=units[a].sum(), s_b=units[b].sum()).execute().to_dict("records")[0]
    return int(row["n"]), float(row["s_a"] or 0.0), float(row["s_b"] or 0.0)


def metric_sums(con: Any, experiment: str, metric: WarehouseMetric, closed_day: int,
                settings: AggregationSettings = AggregationSettings(), exposures_table: str = EXPOSURES
                ) -> dict[str, SufficientStats | RatioStats]:
    """{arm: sums} of one metric for one experiment, computed in the warehouse."""
    import ibis

    exp_all = con.table(exposures_table)
    exposures = exp_all.filter(exp_all.experiment == experiment)
    first_row = exposures.aggregate(start=exposures.day.min()).execute().to_dict("records")[0]
    if first_row["start"] is None or first_row["start"] != first_row["start"]:  # no exposure yet (None or NaN)
        return {}
    start = int(first_row["start"])
    units = _units(exposures, closed_day)
    units = units.mutate(days=(units.end - units["first"]).cast("float64"))
    raw = _metric_table(con, metric)
    cols = COLUMNS[metric.kind][2:]
    # ids as text on both sides: the exposure log stores them so, the user's tables may hold integers
    values = raw.select(raw.user_id.cast("string").name("user_id"), raw.day.cast("int64").name("day"),
                        *[raw[c].cast("float64").name(c) for c in cols])
    units = _window_sums(units, values, cols, lambda j: j["first"], lambda j: j["end"], "w_")
    if metric.kind == "ratio":
        n, s_m, s_d = _totals(units, "w_numerator", "w_denominator")
        refs = (_reference(s_m, n), _reference(s_d, n))
        return {arm: RatioStats(n=s["n"], sum_m=s["s_a"], sum_d=s["s_b"], sum_m2=s["s_aa"], sum_d2=s["s_bb"],
                                sum_md=s["s_ab"], ref_m=refs[0], ref_d=refs[1])
                for arm, s in _arm_sums(units, "w_numerator", "w_denominator", *refs).items()}
    pre_lo = start - settings.pre_days
    # the pre-period's per-day mean uses the days the metric's rows cover (a log may be shorter than pre_days)
    span = values.filter((values.day >= pre_lo) & (values.day < start))
    cover = span.aggregate(lo=span.day.min(), hi=span.day.max()).execute().to_dict("records")[0]
    pre_len = 1.0 if cover["hi"] is None or cover["hi"] != cover["hi"] else \
        float(int(cover["hi"]) - max(int(cover["lo"]), pre_lo) + 1)
    units = _window_sums(units, values, ("value",), lambda j: ibis.literal(pre_lo), lambda j: ibis.literal(start), "x_")
    units = units.mutate(y=units.w_value / units.days, x=units.x_value / pre_len)
    n, s_y, s_x = _totals(units, "y", "x")
    ref_y, ref_x = _reference(s_y, n), _reference(s_x, n)
    return {arm: SufficientStats(n=s["n"], sum_y=s["s_a"], sum_x=s["s_b"], sum_y2=s["s_aa"], sum_x2=s["s_bb"],
                                 sum_xy=s["s_ab"], ref_y=ref_y, ref_x=ref_x)
            for arm, s in _arm_sums(units, "y", "x", ref_y, ref_x).items()}


def warehouse_readout(con: Any, experiment: str, metrics: Iterable[WarehouseMetric], closed_day: int, at: float,
                      settings: AggregationSettings = AggregationSettings(),
                      exposures_table: str = EXPOSURES) -> ExperimentReadout:
    """One look: every metric's per-arm sums, the exposures and the first-exposure cohorts."""
    stats: dict[str, dict[str, Any]] = {}
    try:
        for metric in metrics:
            for arm, sums in metric_sums(con, experiment, metric, closed_day, settings, exposures_table).items():
                stats.setdefault(arm, {})[metric.name] = sums
        e = con.table(exposures_table)
        e = e.filter(e.experiment == experiment)
        exposures = {str(r["arm"]): int(r["n"]) for r in
                     e.group_by("arm").aggregate(n=e.user_id.nunique()).execute().to_dict("records")}
        firsts = e.group_by("user_id").aggregate(day=e.day.min())
        cohort = e.join(firsts, ["user_id", "day"]).select("arm", "day", "user_id")
        cohort = cohort.filter(cohort.day <= closed_day)
        cohorts: dict[int, dict[str, int]] = {}
        for r in cohort.group_by(["day", "arm"]).aggregate(n=cohort.user_id.nunique()).execute().to_dict("records"):
            cohorts.setdefault(int(r["day"]), {})[str(r["arm"])] = int(r["n"])
    except WarehouseError:
        raise
    except Exception as exc:  # noqa: BLE001 - the driver's errors: no readout, no decision
        raise WarehouseUnavailable(f"warehouse readout of {experiment} failed: {one_line(exc)}") from None
    return ExperimentReadout(experiment, at, closed_day, stats, exposures, cohorts)


class WarehouseUnavailable(RuntimeError):
    """The warehouse did not answer: like Prometheus being down, no decision is made."""


def record_exposures(con: Any, experiment: str, rows: Iterable[tuple[Any, str, int]],
                     exposures_table: str = EXPOSURES) -> int:
    """Land first exposures (user_id, arm, day) in the warehouse's exposure table, creating it when missing;
    a (user, arm) already there is kept with its first day, so a resend is harmless. Returns rows added."""
    import ibis
    import pyarrow as pa

    new = [(str(u), str(a), int(d)) for u, a, d in rows]
    if not new:
        return 0
    schema = ibis.schema({"experiment": "string", "user_id": "string", "arm": "string", "day": "int64"})
    duck = getattr(con, "name", "") == "duckdb"  # ibis 12's DuckDB DDL and inserts call what DuckDB 2 removed
    if duck:
        con.con.execute(f"CREATE TABLE IF NOT EXISTS {_ident(exposures_table)} "
                        "(experiment VARCHAR, user_id VARCHAR, arm VARCHAR, day BIGINT)")
    elif exposures_table not in con.list_tables():
        con.create_table(exposures_table, schema=schema)
    t = con.table(exposures_table)
    have = {(r["user_id"], r["arm"]) for r in
            t.filter(t.experiment == experiment).select("user_id", "arm").execute().to_dict("records")}
    first: dict[tuple[str, str], int] = {}
    for u, a, d in new:
        if (u, a) not in have:
            first[(u, a)] = min(d, first.get((u, a), d))
    if first:
        batch = pa.table({"experiment": [experiment] * len(first), "user_id": [u for u, _ in first],
                          "arm": [a for _, a in first], "day": list(first.values())})
        if duck:
            con.con.register("_cambrian_new_exposures", batch)
            try:
                con.con.execute(f"INSERT INTO {_ident(exposures_table)} SELECT * FROM _cambrian_new_exposures")
            finally:
                con.con.unregister("_cambrian_new_exposures")
        else:
            con.insert(exposures_table, batch)
    return len(first)


def _ident(name: str) -> str:
    """A table name as a quoted identifier (rendered by sqlglot, not pasted)."""
    from sqlglot import exp

    return exp.to_table(name).sql(dialect="duckdb")


def metrics_from_spec(items: Iterable[Mapping[str, Any]]) -> list[WarehouseMetric]:
    return [WarehouseMetric(str(m["name"]), str(m["sql"]), m.get("kind", "mean")) for m in items]
