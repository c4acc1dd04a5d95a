"""A warehouse metric's SQL, checked before it is used: one read-only query, parsed by sqlglot (the parser ibis
uses), never a second statement. Light on purpose: the operator checks specs with it at admission without
importing the analysis' dependencies."""

from __future__ import annotations

from cambrian.errors import ConfigError, one_line

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
