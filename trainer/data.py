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
import pyarrow as pa

from cambrian import inputs
from cambrian.errors import ConfigError, GateError
from cambrian.trainer.config import ModelConfig, RewardConfig
from cambrian.trainer.datacheck import read_checked, require_valid
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
    signals: pd.DataFrame | None = field(repr=False)  # raw logged signals, for the loss-independent proxies

    def __len__(self) -> int:
        return len(self.label)

    def head(self, n: int) -> "Split":
        return Split({k: v[:n] for k, v in self.features.items()}, self.label[:n], self.weight[:n], None)

    def batches(self, epoch: int, batch_size: int, seed: int, start_step: int = 0):
        """The epoch's batches from `start_step` on: one permutation of all rows (trainer/rows.py streams a
        split too long to hold)."""
        from cambrian.trainer.rows import epoch_rng

        order = epoch_rng(seed, epoch).permutation(len(self))
        for start in range(start_step * batch_size, len(order), batch_size):
            index = order[start:start + batch_size]
            yield {k: v[index] for k, v in self.features.items()}, self.label[index], self.weight[index]


@dataclass
class Written:
    """The training rows as the trusted process wrote them for the contained trainer (trainer/rows.py): one
    Parquet file per worker, `rows` in all."""

    files: list[Path]
    rows: int

    def __len__(self) -> int:
        return self.rows


@dataclass
class TrainingSet:
    """What the contained training process gets: no held-out rows at all (spec is catalogue.spec)."""

    spec: FeatureSpec
    catalogue: Catalogue
    train: Split | Written  # the contained trainer's is a Split or a RowGroupStream (trainer/rows.py)


@dataclass
class Dataset(TrainingSet):
    val: Split  # held out: stays with the scorer
    n_train_available: int = 0  # training rows before training.max_train_examples cut them


def world_schema(data_dir: str | Path) -> DataSchema:
    """The declaration the world's tables are read through (trainer/schema.py WORLD), from any source the
    reader knows: a data directory, s3://bucket/prefix or a SQL warehouse holding the same tables. The features
    the model gets are the world's own, or those of the declaration that a data directory's world.json names
    (`"features": "movielens-100k"`), carried in the world's users and items tables."""
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
    return with_features(WORLD, declared)


def read_world(data_dir: str | Path) -> tuple[DataSchema, dict[str, pd.DataFrame]]:
    """The world's tables in memory (world_schema); a source that fails the data check is refused here."""
    schema = world_schema(data_dir)
    return schema, read_checked(schema, str(data_dir))


class _Joiner:
    """Impressions with the user's delayed day label and the item's observable features: a left join of each
    batch against the small tables, held in memory (they grow with users x days and items, not impressions)."""

    def __init__(self, user_days: pd.DataFrame, items: pd.DataFrame):
        days = user_days.astype({"day": np.int64, "user_id": np.int64}).drop_duplicates(["day", "user_id"])
        self.day_label = pd.Series(days["returned_next_day"].to_numpy(),
                                   index=pd.MultiIndex.from_frame(days[["day", "user_id"]]))
        self.items = (items.astype({"item_id": np.int64}).drop_duplicates("item_id").set_index("item_id")
                      [["length_min", "topic", "thumb_intensity"]])

    def __call__(self, df: pd.DataFrame) -> pd.DataFrame:
        key = pd.MultiIndex.from_arrays([df["day"].to_numpy(np.int64), df["user_id"].to_numpy(np.int64)])
        df["returned_next_day"] = self.day_label.reindex(key).fillna(0).to_numpy().astype(np.int8)
        found = self.items.reindex(df["item_id"].to_numpy(np.int64))
        for column in found.columns:
            df[column] = found[column].to_numpy()
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


class _RewardTotals:
    """The checks of a reward over a whole split, folded batch by batch."""

    def __init__(self):
        self.low, self.high, self.weight = np.inf, -np.inf, 0.0

    def add(self, label: np.ndarray, weight: np.ndarray) -> None:
        if len(label):
            self.low, self.high = min(self.low, float(label.min())), max(self.high, float(label.max()))
            self.weight += float(weight.sum(dtype=np.float64))

    def check(self) -> None:
        if self.weight <= 0:
            raise GateError("reward_sql", "reward weight is zero for every impression")
        if self.low == self.high:
            raise GateError("reward_sql", f"reward label is constant ({self.low:.3g}): nothing to learn")


def _reward_values(df: pd.DataFrame, reward: RewardConfig) -> tuple[np.ndarray, np.ndarray]:
    """The reward's label and weight per impression with DuckDB, each row checked (the expressions were checked
    by check_reward_sql)."""
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
    if reward.loss == "bce" and ((label < 0) | (label > 1)).any():
        raise GateError("reward_sql", f"the bce loss needs labels in [0, 1]; got range [{label.min():.3g}, {label.max():.3g}]",
                        hint="scale the label, or use loss: mse")
    return label.astype(np.float32), weight.astype(np.float32)


def reward_labels(df: pd.DataFrame, reward: RewardConfig) -> tuple[np.ndarray, np.ndarray]:
    """Evaluate the reward's label and weight expressions with DuckDB; validate them (gate stage reward_sql)."""
    check_reward_sql(reward.label, "label")
    check_reward_sql(reward.weight, "weight")
    label, weight = _reward_values(df, reward)
    totals = _RewardTotals()
    totals.add(label, weight)
    totals.check()
    return label, weight


SIGNALS = ["user_id", "click", "watch_seconds", "completion", "like", "hate", "returned_next_day"]


def train_file(rank: int, world: int) -> str:
    """The training rows of worker `rank` of `world` in the contained trainer's input folder."""
    from cambrian.trainer.distributed import shard_name

    return "train.parquet" if world == 1 else shard_name(rank, world)


def prepare(data_dir: str | Path, config: ModelConfig, folder: Path | None, workers: int = 1) -> Dataset:
    """The data set in one streaming pass over the interactions (after the data check's own): training rows
    go to Parquet files in `folder` as they are read (one per worker, rows dealt round-robin and cut to equal
    length, trainer/rows.py), the held-out days stay in memory for the scorer, and the vocabularies and
    statistics come from the ids the kept training rows carry. Memory holds the small tables (users, items,
    user days), the held-out split and one batch, never the training split. `folder` None: count only."""
    from cambrian.trainer.distributed import shard_of
    from cambrian.trainer.features import _ids
    from cambrian.trainer.rows import RowWriter
    from cambrian.trainer.sources import close, open_source, read_tables

    schema = world_schema(data_dir)
    check_reward_sql(config.reward.label, "label")
    check_reward_sql(config.reward.weight, "weight")
    text, key = str(data_dir), schema.interactions
    source = open_source(text)
    writers: list[RowWriter] = []
    try:
        report = require_valid(schema, source, text)  # streamed, before anything is written
        small = {k: t.to_pandas() for k, t in read_tables(schema, source, [k for k in schema.tables if k != key]).items()}
        per_day = report.tables[key].rows_per_day
        days = sorted(per_day)
        n_val = config.training.validation_days
        if len(days) <= n_val:
            raise ConfigError(f"{data_dir}: {len(days)} logged day(s) cannot hold out {n_val} validation day(s)",
                              hint="generate more days or lower training.validation_days")
        cutoff = days[-n_val]
        available = sum(n for d, n in per_day.items() if d < cutoff)
        cap = config.training.max_train_examples
        n = available if cap is None else min(available, cap)  # the most recent n training rows are kept
        if workers > 1:
            shard_of(np.zeros(0, np.int64), n, workers)  # refuses too few rows before any is read
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
            writers = [RowWriter(folder / train_file(r, workers)) for r in range(workers)]
        join = _Joiner(small["user_days"], small["items"])
        table = schema.tables[key]
        found = source.arrow_schema(key, table)
        wanted = pa.schema([found.field(c) for c in table.columns])
        totals, val_totals = _RewardTotals(), _RewardTotals()
        counts = [np.zeros(0, np.int64), np.zeros(0, np.int64)]  # training rows per user id, per item id
        top = [-1, -1]
        seen = 0  # training rows read so far, kept or not
        held_out: list[pd.DataFrame] = []
        for batch in source.batches(key, table, list(table.columns)):
            df = join(pa.Table.from_batches([batch]).cast(wanted).to_pandas())
            for i, column in enumerate((schema.user_id, schema.item_id)):
                top[i] = max(top[i], int(_ids(df, column, key).max()))
            label, weight = _reward_values(df, config.reward)
            is_val = df["day"].to_numpy() >= cutoff
            index = seen + np.arange(int((~is_val).sum())) - (available - n)  # its place among the kept rows
            seen += len(index)
            keep = index >= 0
            rows = np.flatnonzero(~is_val)[keep]
            user, item = df["user_id"].to_numpy(np.int64)[rows], df["item_id"].to_numpy(np.int64)[rows]
            totals.add(label[rows], weight[rows])
            for i, ids in enumerate((user, item)):
                add = np.bincount(ids, minlength=len(counts[i]))
                add[:len(counts[i])] += counts[i]
                counts[i] = add
            if writers:
                rank = shard_of(index[keep], n, workers) if workers > 1 else np.zeros(len(rows), np.int64)
                for r, writer in enumerate(writers):
                    mine = rank == r
                    writer.write(user[mine], item[mine], label[rows][mine], weight[rows][mine])
            if is_val.any():
                part = df.loc[is_val, SIGNALS + ["item_id"]].copy()
                part["label"], part["weight"] = label[is_val], weight[is_val]
                val_totals.add(label[is_val], weight[is_val])
                held_out.append(part)
        if seen != available:
            raise ConfigError(f"{data_dir}: {key} gave {seen} training rows, the data check counted {available}",
                              hint="was the source written to while it was read?")
    finally:
        for writer in writers:
            writer.close()
        close(source)
    totals.check()
    val_totals.check()
    n_users, n_items = (max(a, b + 1) for a, b in zip(id_space(schema, small), top))
    # vocabularies and statistics from the rows the model trains on: a held-out day's new category is unknown
    catalogue = build_catalogue(schema, small, counts[0], counts[1], n_users, n_items)
    val = pd.concat(held_out, ignore_index=True)
    val_split = Split(catalogue.features(val["user_id"].to_numpy(np.int64), val["item_id"].to_numpy(np.int64)),
                      np.array(val["label"], np.float32), np.array(val["weight"], np.float32),
                      val[SIGNALS].reset_index(drop=True))
    written = Written([w.path for w in writers], n)
    return Dataset(catalogue.spec, catalogue, written, val_split, n_train_available=available)


def load_dataset(data_dir: str | Path, config: ModelConfig) -> Dataset:
    """The data set with its training split in memory (prepare, then its rows read whole): for in-process
    training and benchmarks; `cambrian train` hands the contained trainer the Parquet files instead."""
    import tempfile

    import pyarrow.parquet as pq

    from cambrian.trainer.rows import read_columns

    with tempfile.TemporaryDirectory(prefix="cambrian-rows-") as tmp:
        data = prepare(data_dir, config, Path(tmp))
        user, item, label, weight = read_columns(pq.read_table(data.train.files[0]))
    data.train = Split(data.catalogue.features(user, item), label, weight, None)
    return data
