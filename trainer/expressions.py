"""Expressions inside a declaration (its label, its proxies' signals): SQL parsed by sqlglot, checked to read only
the columns the declaration allows, and turned into DuckDB SQL over one batch of joined rows (trainer/rowframe.py).

A column is written `table.column` (or the bare column name when only one allowed column has it); a named parameter
`:name` is bound from the model config's reward (`:long_watch_seconds`). Only scalar row expressions are accepted:
no aggregate, window, subquery, table, star or unknown function, so a value depends on its own row alone.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import sqlglot
from sqlglot import exp

# Parameters an expression may name, bound from the model config's reward section at evaluation.
PARAMETERS = ("long_watch_seconds",)
MAX_CHARS = 2000

# The node types of a scalar expression over one row; anything else (aggregates, subqueries, windows, stars,
# lambdas, unknown functions, struct access) is refused.
_ALLOWED = (
    exp.Column, exp.Identifier, exp.Literal, exp.Boolean, exp.Null, exp.Paren, exp.Neg, exp.Not, exp.Placeholder,
    exp.Add, exp.Sub, exp.Mul, exp.Div, exp.IntDiv, exp.Mod, exp.EQ, exp.NEQ, exp.GT, exp.GTE, exp.LT, exp.LTE,
    exp.And, exp.Or, exp.Is, exp.Between, exp.In, exp.Tuple, exp.Cast, exp.TryCast, exp.DataType, exp.DataTypeParam,
    exp.Case, exp.If, exp.Coalesce, exp.Nullif, exp.Abs, exp.Least, exp.Greatest, exp.Floor, exp.Ceil, exp.Round,
    exp.Ln, exp.Log, exp.Exp, exp.Sqrt, exp.Pow, exp.Sign,
)


class ExpressionError(ValueError):
    """One line: what is wrong with an expression."""


@dataclass(frozen=True)
class Compiled:
    text: str  # as declared
    refs: tuple[str, ...]  # the table.column references it reads, sorted
    params: tuple[str, ...]  # the parameters it names

    def duckdb(self, names: dict[str, str], values: dict[str, float]) -> str:
        """DuckDB SQL with each reference renamed to its column in the batch (`names`: ref -> column) and each
        parameter replaced by its value."""
        def rename(node: exp.Expression) -> exp.Expression:
            if isinstance(node, exp.Column):
                return exp.column(names[_resolved(node, self.refs)], quoted=True)
            if isinstance(node, exp.Placeholder):
                return exp.Literal.number(repr(float(values[node.name])))
            return node
        return _parse(self.text).transform(rename).sql(dialect="duckdb")


def _parse(text: str) -> exp.Expression:
    return sqlglot.parse_one(text, read="duckdb")


def _resolved(column: exp.Column, refs) -> str:
    name = column.name
    if column.table:
        return f"{column.table}.{name}"
    return next(r for r in refs if r.split(".", 1)[1] == name)


def compile_expression(text: str, allowed: tuple[str, ...] | list[str]) -> Compiled:
    """Parse and check `text`; ExpressionError (one line) when it is not one scalar SQL expression over the
    `allowed` table.column references."""
    if not isinstance(text, str) or not text.strip():
        raise ExpressionError("an expression is required (SQL over declared columns)")
    if len(text) > MAX_CHARS:
        raise ExpressionError(f"{len(text)} characters; the limit is {MAX_CHARS}")
    try:
        statements = sqlglot.parse(text, read="duckdb")
    except sqlglot.errors.SqlglotError as exc:
        raise ExpressionError(f"not SQL: {str(exc).splitlines()[0]}") from None
    if len(statements) != 1 or statements[0] is None:
        raise ExpressionError("it must be exactly one expression")
    tree = statements[0]
    refs: set[str] = set()
    params: set[str] = set()
    for node in tree.walk():
        if isinstance(node, (exp.AggFunc, exp.Window)):
            raise ExpressionError(f"aggregate or window {node.sql(dialect='duckdb')!r} is not allowed (one row's value)")
        if isinstance(node, (exp.Query, exp.Subquery)) or isinstance(node, exp.Star):
            raise ExpressionError("it must be an expression over one row, not a query (no SELECT, subquery or *)")
        if not isinstance(node, _ALLOWED):
            if isinstance(node, exp.Func):
                what = f"function {(node.name if isinstance(node, exp.Anonymous) else node.sql_name()).lower()}"
            else:
                what = f"{type(node).__name__.lower()} {node.sql(dialect='duckdb')!r}"
            raise ExpressionError(f"{what} is not allowed "
                                  "(arithmetic, comparisons, CASE, CAST and scalar functions such as LEAST, LN only)")
        if isinstance(node, exp.Column):
            if node.args.get("db") or node.args.get("catalog"):
                raise ExpressionError(f"column {node.sql()!r}: write table.column")
            if node.table:
                ref = f"{node.table}.{node.name}"
                if ref not in allowed:
                    raise ExpressionError(f"{ref} is not a declared column it may read (allowed: {', '.join(allowed)})")
            else:
                found = [r for r in allowed if r.split(".", 1)[1] == node.name]
                if len(found) != 1:
                    why = "is ambiguous" if found else "is not a declared column it may read"
                    raise ExpressionError(f"column {node.name!r} {why} (allowed: {', '.join(allowed)})")
                ref = found[0]
            refs.add(ref)
        if isinstance(node, exp.Placeholder):
            if node.name not in PARAMETERS:
                raise ExpressionError(f"parameter :{node.name} is unknown (known: "
                                      f"{', '.join(':' + p for p in PARAMETERS)})")
            params.add(node.name)
    if isinstance(tree, exp.In) and tree.args.get("query"):
        raise ExpressionError("it must be an expression over one row, not a query")
    return Compiled(text, tuple(sorted(refs)), tuple(sorted(params)))


# Functions that never decrease as their first argument grows (the others constant).
_RISING_FUNCS = (exp.Cast, exp.TryCast, exp.Paren, exp.Ln, exp.Sqrt, exp.Exp, exp.Floor, exp.Ceil, exp.Round)


def _parsed_about(text: str, ref: str):
    """The parse of a declared expression (None when it is not text, too long or does not parse) and a test of
    whether a node is the column `ref` (table.column, or the bare column name)."""
    if not isinstance(text, str) or len(text) > MAX_CHARS:
        return None
    try:
        tree = _parse(text)
    except sqlglot.errors.SqlglotError:
        return None
    table, _, name = ref.partition(".")

    def is_ref(node: exp.Expression) -> bool:
        return isinstance(node, exp.Column) and node.name == name and node.table in ("", table)

    return tree, is_ref


def rises_with(text: str, ref: str, flag: bool = False) -> bool:
    """Is the expression a non-decreasing function of the column `ref` (table.column) that reads no other column,
    so that more of the column never makes it smaller: `ref`, `ref >= 4`, `COALESCE(ref, 0)`, `LEAST(ref, 1)`,
    `CAST(ref AS DOUBLE) / 5`, `LN(1 + ref)`. `flag`: the column is 0/1, so `ref = 1` rises with it too.
    False for anything else (`hate = 0`, `1 - ref`, another column), and for text that does not parse."""
    parsed = _parsed_about(text, ref)
    if parsed is None:
        return False
    tree, is_ref = parsed

    def positive(node: exp.Expression) -> bool:
        return isinstance(node, exp.Literal) and node.is_number and float(node.this) > 0

    def kind(node: exp.Expression) -> str:  # "const", "rising" (non-decreasing, reads ref) or "other"
        if isinstance(node, exp.Column):
            return "rising" if is_ref(node) else "other"
        if isinstance(node, (exp.Literal, exp.Placeholder, exp.Null, exp.Boolean)):
            return "const"
        if isinstance(node, exp.Neg):
            return "const" if kind(node.this) == "const" else "other"
        if isinstance(node, _RISING_FUNCS):
            rest = [v for k, v in node.args.items() if k not in ("this", "to") and isinstance(v, exp.Expression)]
            return kind(node.this) if all(kind(v) == "const" for v in rest) else "other"
        if isinstance(node, (exp.Coalesce, exp.Least, exp.Greatest)):
            kinds = {kind(a) for a in [node.this, *node.expressions]}
            return "other" if "other" in kinds else ("rising" if "rising" in kinds else "const")
        left, right = node.args.get("this"), node.args.get("expression")
        if left is None or right is None:
            return "other"
        a, b = kind(left), kind(right)
        if a == b == "const":
            return "const"
        if isinstance(node, exp.Add) and {a, b} <= {"rising", "const"}:
            return "rising"
        if isinstance(node, (exp.Sub, exp.GT, exp.GTE)) and (a, b) == ("rising", "const"):
            return "rising"
        if isinstance(node, (exp.LT, exp.LTE)) and (a, b) == ("const", "rising"):
            return "rising"
        if isinstance(node, exp.Mul) and {a, b} == {"rising", "const"} and positive(left if a == "const" else right):
            return "rising"
        if isinstance(node, exp.Div) and (a, b) == ("rising", "const") and positive(right):
            return "rising"
        if isinstance(node, exp.EQ) and flag and (a, b) == ("rising", "const") and right.sql() in ("1", "TRUE"):
            return "rising"
        return "other"

    return kind(tree) == "rising"


def threshold_of(text: str, ref: str, integer: bool = False) -> float | None:
    """The cut t when the expression is exactly the threshold `ref >= t` (also `t <= ref`; on an `integer`
    column `ref > t` too, which is `ref >= floor(t) + 1`, and `ref >= 3.5`, which is `ref >= 4`): the label a
    threshold reward with that t would repeat. None for anything else and for text that does not parse."""
    parsed = _parsed_about(text, ref)
    if parsed is None:
        return None
    tree, is_ref = parsed
    while isinstance(tree, exp.Paren):
        tree = tree.this

    def number(node: exp.Expression) -> float | None:
        if isinstance(node, exp.Neg) and isinstance(node.this, exp.Literal) and node.this.is_number:
            return -float(node.this.this)
        return float(node.this) if isinstance(node, exp.Literal) and node.is_number else None

    left, right = tree.args.get("this"), tree.args.get("expression")
    if isinstance(tree, (exp.LT, exp.LTE)):  # t <= ref is ref >= t
        left, right = right, left
        strict = isinstance(tree, exp.LT)
    elif isinstance(tree, (exp.GT, exp.GTE)):
        strict = isinstance(tree, exp.GT)
    else:
        return None
    t = number(right) if left is not None and right is not None and is_ref(left) else None
    if t is None or (strict and not integer):
        return None
    if integer:
        return float(math.floor(t) + 1 if strict else math.ceil(t))
    return t


@functools.lru_cache(maxsize=1024)  # de-duplication asks again for every journal entry at every wake-up
def canonical_sql(text: str, label: str | None = None) -> str:
    """One spelling of a reward's label or weight, for de-duplication only (agents/canonical.py): identifiers in
    one case (DuckDB's are case-insensitive, quoted or not), sqlglot's semantics-preserving simplification (no
    redundant parentheses, the literal on the right of a comparison, constant parts folded), a number compared
    with something written as a float (`rating >= 4` is `rating >= 4.0`), a cast of the whole
    expression to DOUBLE dropped and a bare number written as a float: the trainer casts every label and weight to
    DOUBLE (rowframe.evaluate), so `CAST(label AS DOUBLE)`, `("Label")` and `label` train the same model. Nothing
    that changes a value is rewritten (TRY_CAST, a cast to FLOAT, a cast inside). `label`: the declaration's label
    (its `expr`, else its column; trainer/schema.py Label), which the row's column `label` holds as a DOUBLE
    (rowframe.RowFrame.join): it stands in for `label`, so MovieLens's `CAST(rating >= 4 AS DOUBLE)` is its `label`.
    Text that is too long or does not parse comes back as it is: the gate reports it."""
    from sqlglot.optimizer.normalize_identifiers import normalize_identifiers
    from sqlglot.optimizer.simplify import simplify

    if not isinstance(text, str) or len(text) > MAX_CHARS:
        return text
    try:
        statements = sqlglot.parse(text, read="duckdb")
        if len(statements) != 1 or statements[0] is None:
            return text
        tree = statements[0]
        if label is not None:
            tree = tree.transform(lambda node: _declared_label(label) if _is_label(node) else node)
        tree = simplify(normalize_identifiers(tree, dialect="duckdb"), dialect="duckdb").transform(_compared_as_float)
        while type(tree) is exp.Cast and tree.to.this == exp.DataType.Type.DOUBLE:  # TryCast is a subclass
            tree = tree.this
        if isinstance(tree, exp.Paren):
            tree = tree.this
        number = tree.this if isinstance(tree, exp.Neg) else tree
        if isinstance(number, exp.Literal) and number.is_number:
            return repr(-float(number.this) if number is not tree else float(number.this))
        return tree.sql(dialect="duckdb", identify=True)  # every identifier quoted: `"x"` and `x` are one name
    except (sqlglot.errors.SqlglotError, ValueError, RecursionError):
        return text


def _is_label(node: exp.Expression) -> bool:
    return isinstance(node, exp.Column) and not node.table and node.name.lower() == "label"


def _declared_label(text: str) -> exp.Expression:
    """The declared label as the row's `label` column holds it: CAST((expr) AS DOUBLE), its columns by the bare names
    a reward reads them by (trainer/schema.py row_columns: each is unique in a joined row)."""
    tree = _parse(text).transform(lambda n: exp.column(n.name, quoted=n.this.quoted) if isinstance(n, exp.Column) else n)
    if any(_is_label(n) for n in tree.find_all(exp.Column)):
        raise ValueError("a declared label cannot read the row's label")  # canonical_sql then leaves the text
    return exp.cast(exp.paren(tree, copy=False), exp.DataType.Type.DOUBLE)


_COMPARISONS = (exp.EQ, exp.NEQ, exp.GT, exp.GTE, exp.LT, exp.LTE)


def _compared_as_float(node: exp.Expression) -> exp.Expression:
    """A number on either side of a comparison as a float literal: DuckDB compares 4 and 4.0 as the same number."""
    if isinstance(node, _COMPARISONS):
        for side in ("this", "expression"):
            value = node.args.get(side)
            if isinstance(value, exp.Literal) and value.is_number:
                node.set(side, exp.Literal.number(repr(float(value.this))))
    return node
