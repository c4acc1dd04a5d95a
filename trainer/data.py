"""Training data: world logs -> feature tensors, and reward labels computed with DuckDB SQL.

The trainer reads only the observable files of a data directory (docs/CONTRACTS.md); the hidden
`truth/` folder is never opened here. The split is temporal: the last `validation_days` days are held
out, so the offline proxies say something about the future, as the online test will.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd

from cambrian import inputs
from cambrian.errors import ConfigError, GateError
from cambrian.trainer.config import ModelConfig, RewardConfig
from cambrian.trainer.datacheck import read_checked
from cambrian.trainer.features import Catalogue, FeatureSpec, build_catalogue, id_space, with_features
from cambrian.trainer.schema import BUILT_IN, WORLD, DataSchema, load_schema

# Columns the reward SQL may use (impressions joined with the user's day).
IMPRESSION_COLUMNS = (
    "day", "user_id", "session", "step", "position", "item_id", "click", "watch_seconds", "completion",
    "skip", "like", "hate", "returned_next_day", "length_min", "topic", "thumb_intensity",
)

MAX_SQL_CHARS = 2000
# A reward is an expression over one impression's columns: scalar functions only, minus those that read the
# session, its settings or files, or that are not a function of the row.
_DENIED_FUNCTIONS = {"current_setting", "getvariable", "nextval", "currval", "setseed", "error", "random", "uuid",
                     "gen_random_uuid", "uuidv4", "uuidv7", "now", "today", "get_current_time", "get_current_timestamp",
                     "transaction_timestamp", "version", "getenv", "query", "query_table", "glob", "sniff_csv"}
_DENIED_PREFIXES = ("read_", "current_", "pg_", "has_", "duckdb_", "icu_", "system", "txid")
_EXPRESSION_CLASSES = {"CONSTANT", "COLUMN_REF", "FUNCTION", "OPERATOR", "CAST", "CASE", "COMPARISON",
                       "CONJUNCTION", "BETWEEN", "TYPE"}
@dataclass
class Split:
    features: dict[str, np.ndarray]
    label: np.ndarray  # float32
    weight: np.ndarray  # float32
    signals: pd.DataFrame = field(repr=False)  # raw logged signals, for the loss-independent proxies

    def __len__(self) -> int:
        return len(self.label)


@dataclass
class TrainingSet:
    """What the contained training process gets: no held-out rows at all (spec is catalogue.spec)."""

    spec: FeatureSpec
    catalogue: Catalogue
    train: Split


@dataclass
class Dataset(TrainingSet):
    val: Split  # held out: stays with the scorer
    n_train_available: int = 0  # training rows before training.max_train_examples cut them


def read_world(data_dir: str | Path) -> tuple[DataSchema, dict[str, pd.DataFrame]]:
    """The world's tables through its declaration (trainer/schema.py WORLD), from any source the reader
    knows: a data directory, s3://bucket/prefix or a SQL warehouse holding the same tables. The features the
    model gets are the world's own, or those of the declaration that a data directory's world.json names
    (`"features": "movielens-100k"`), carried in the world's users and items tables. A source that fails the
    data check is refused here, before any training."""
    text = str(data_dir)
    meta: dict = {}
    if "://" not in text or text.startswith("file://"):
        folder = inputs.data_dir(Path(text.removeprefix("file://")))
        try:
            meta = json.loads((folder / "world.json").read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{data_dir}: unreadable data directory: {exc}") from None
        named = meta.get("features")
        try:
            declared = load_schema(named if named in BUILT_IN else folder / str(named)) if named else WORLD
        except ConfigError as exc:  # its message starts "--schema PATH:", the option of `cambrian data check`
            why = str(exc).split(": ", 1)[-1]
            raise ConfigError(f"{folder / 'world.json'}: features {named!r}: {why}", hint=exc.hint) from None
    else:
        declared = WORLD
    schema = with_features(WORLD, declared)
    return schema, read_checked(schema, text)


def joined_impressions(impressions: pd.DataFrame, user_days: pd.DataFrame, items: pd.DataFrame) -> pd.DataFrame:
    """Impressions with the user's delayed day label and the item's observable features."""
    day_labels = user_days[["day", "user_id", "returned_next_day"]]
    df = impressions.merge(day_labels, on=["day", "user_id"], how="left")
    df = df.merge(items[["item_id", "length_min", "topic", "thumb_intensity"]], on="item_id", how="left")
    df["returned_next_day"] = df["returned_next_day"].fillna(0).astype(np.int8)
    return df


@lru_cache(maxsize=1)
def _scalar_functions() -> frozenset[str]:
    con = duckdb.connect(config={"enable_external_access": False})
    try:
        rows = con.execute("SELECT DISTINCT lower(function_name) FROM duckdb_functions() "
                           "WHERE function_type IN ('scalar', 'macro')").fetchall()
    finally:
        con.close()
    return frozenset(name for (name,) in rows
                     if name not in _DENIED_FUNCTIONS and not name.startswith(_DENIED_PREFIXES))


def _sql_problem(tree: dict) -> str | None:
    """Walk DuckDB's parse tree of `SELECT <expr>`: one select item, no FROM or clauses, and every node an
    expression over the impression columns (no subqueries, windows, aggregates, table functions, lambdas)."""
    statements = tree.get("statements") or []
    if len(statements) != 1:
        return "it must be exactly one expression"
    node = statements[0].get("node") or {}
    if node.get("type") != "SELECT_NODE" or len(node.get("select_list") or []) != 1:
        return "it must be exactly one expression"
    clauses = [k for k in ("where_clause", "having", "qualify", "sample") if node.get(k)]
    if (node.get("from_table") or {}).get("type", "EMPTY") != "EMPTY" or clauses or node.get("modifiers") \
            or (node.get("group_expressions") or []) or (node.get("cte_map") or {}).get("map"):
        return "it must be an expression, not a query (no FROM, WHERE, GROUP BY, ORDER BY, WITH)"
    allowed_functions = _scalar_functions()
    todo: list = [node["select_list"][0]]
    while todo:
        item = todo.pop()
        if isinstance(item, list):
            todo.extend(item)
            continue
        if not isinstance(item, dict):
            continue
        cls = item.get("class")
        if cls is not None:
            if cls not in _EXPRESSION_CLASSES:
                return f"{cls.lower().replace('_', ' ')} expressions are not allowed (no subqueries, windows or lambdas)"
            if cls == "COLUMN_REF":
                names = [str(n).lower() for n in item.get("column_names") or []]
                if not names or names[-1] not in IMPRESSION_COLUMNS or names[:-1] not in ([], ["impressions"]):
                    return f"unknown column {'.'.join(names)!r}"
            if cls == "FUNCTION":
                name = str(item.get("function_name", "")).lower()
                if item.get("schema") not in ("", None, "main", "pg_catalog") or name not in allowed_functions:
                    return f"function {name!r} is not allowed (scalar functions of the row only)"
                if item.get("filter") or (item.get("order_bys") or {}).get("orders") or item.get("distinct"):
                    return f"aggregate syntax in {name!r} is not allowed"
        todo.extend(v for k, v in item.items() if isinstance(v, (dict, list)))
    return None


def check_reward_sql(expr: str, what: str) -> None:
    """Gate stage reward_sql, on DuckDB's own parse of the expression (never on its text)."""
    hint = f"available columns: {', '.join(IMPRESSION_COLUMNS)}"
    if not isinstance(expr, str):
        raise GateError("reward_sql", f"reward {what} must be a SQL expression (text), not {type(expr).__name__}")
    if not expr.strip():
        raise GateError("reward_sql", f"reward {what} is empty")
    if len(expr) > MAX_SQL_CHARS:
        raise GateError("reward_sql", f"reward {what} is {len(expr)} characters; the limit is {MAX_SQL_CHARS}")
    con = duckdb.connect(config={"enable_external_access": False})
    try:
        tree = json.loads(con.execute("SELECT json_serialize_sql(?)", ["SELECT " + expr]).fetchone()[0])
    except (duckdb.Error, ValueError, TypeError) as exc:
        raise GateError("reward_sql", f"reward {what} could not be parsed: {str(exc).splitlines()[0]}", hint=hint) from None
    finally:
        con.close()
    if tree.get("error"):
        raise GateError("reward_sql", f"reward {what} does not parse: {tree.get('error_message', 'syntax error')}",
                        hint=hint)
    problem = _sql_problem(tree)
    if problem:
        raise GateError("reward_sql", f"reward {what} must be one SQL expression over the impression columns: {problem}",
                        hint=hint)


def _values(out: dict, name: str, n: int, what: str) -> np.ndarray:
    col = out[name]
    if np.ma.isMaskedArray(col) and col.mask.any():
        raise GateError("reward_sql", f"reward {what} is NULL for {int(np.ma.getmaskarray(col).sum())} impressions",
                        hint="give every impression a value (COALESCE, or an ELSE branch)")
    values = np.asarray(np.ma.getdata(col), dtype=np.float64)
    if len(values) != n:
        raise GateError("reward_sql", "reward SQL must yield exactly one value per impression")
    return values


def reward_labels(df: pd.DataFrame, reward: RewardConfig) -> tuple[np.ndarray, np.ndarray]:
    """Evaluate the reward's label and weight expressions with DuckDB; validate them (gate stage reward_sql)."""
    check_reward_sql(reward.label, "label")
    check_reward_sql(reward.weight, "weight")
    # No file or network access from the SQL: the logs are handed over in memory, and each expression is
    # bound as an expression object of a projection, never pasted into a statement's text.
    con = duckdb.connect(config={"enable_external_access": False})
    try:
        rel = con.from_df(df[list(IMPRESSION_COLUMNS)])
        double = duckdb.sqltypes.DOUBLE if hasattr(duckdb, "sqltypes") else duckdb.typing.DOUBLE
        out = rel.select(duckdb.SQLExpression(reward.label).cast(double).alias("label"),
                         duckdb.SQLExpression(reward.weight).cast(double).alias("weight")).fetchnumpy()
    except duckdb.Error as exc:
        raise GateError("reward_sql", f"reward SQL failed: {str(exc).splitlines()[0]}",
                        hint=f"available columns: {', '.join(IMPRESSION_COLUMNS)}") from None
    finally:
        con.close()
    label = _values(out, "label", len(df), "label")
    weight = _values(out, "weight", len(df), "weight")
    if not np.isfinite(label).all():
        raise GateError("reward_sql", f"reward label is not finite for {int((~np.isfinite(label)).sum())} impressions")
    if not np.isfinite(weight).all() or (weight < 0).any():
        raise GateError("reward_sql", "reward weight must be finite and non-negative for every impression")
    if weight.sum() <= 0:
        raise GateError("reward_sql", "reward weight is zero for every impression")
    if reward.loss == "bce" and ((label < 0) | (label > 1)).any():
        raise GateError("reward_sql", f"the bce loss needs labels in [0, 1]; got range [{label.min():.3g}, {label.max():.3g}]",
                        hint="scale the label, or use loss: mse")
    if np.ptp(label) == 0:
        raise GateError("reward_sql", f"reward label is constant ({label[0]:.3g}): nothing to learn")
    return label.astype(np.float32), weight.astype(np.float32)


def _split(df: pd.DataFrame, catalogue: Catalogue, reward: RewardConfig) -> Split:
    label, weight = reward_labels(df, reward)
    feats = catalogue.features(df["user_id"].to_numpy(np.int64), df["item_id"].to_numpy(np.int64))
    signals = df[["user_id", "click", "watch_seconds", "completion", "like", "hate", "returned_next_day"]].reset_index(drop=True)
    return Split(feats, label, weight, signals)


def load_dataset(data_dir: str | Path, config: ModelConfig) -> Dataset:
    schema, frames = read_world(data_dir)
    df = joined_impressions(frames["impressions"], frames["user_days"], frames["items"])
    days = np.sort(df["day"].unique())
    n_val = config.training.validation_days
    if len(days) <= n_val:
        raise ConfigError(f"{data_dir}: {len(days)} logged day(s) cannot hold out {n_val} validation day(s)",
                          hint="generate more days or lower training.validation_days")
    is_val = df["day"] >= days[-n_val]
    train_df, val_df = df[~is_val], df[is_val]
    available = len(train_df)
    cap = config.training.max_train_examples
    if cap is not None and available > cap:  # keep the most recent examples
        train_df = train_df.iloc[-cap:]
    # vocabularies and statistics from the rows the model trains on: a held-out day's new category is unknown
    catalogue = build_catalogue(schema, frames, train_df["user_id"].to_numpy(), train_df["item_id"].to_numpy(),
                                *id_space(schema, frames))
    return Dataset(catalogue.spec, catalogue, _split(train_df, catalogue, config.reward),
                   _split(val_df, catalogue, config.reward), n_train_available=available)
