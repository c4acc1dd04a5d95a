"""Training data by declaration: a source's interactions -> training rows, reward labels computed with DuckDB SQL,
and the held-out rows with the declared label and proxy signals.

The source's declaration (trainer/schema.py: the world's, MovieLens-100k's as published, or the user's own YAML)
decides the features, the label, the columns rewards may read and the proxies; the trainer reads only its declared
tables (the world's hidden `truth/` folder is never declared). The split is temporal: the last `validation_days`
days are held out, so the offline proxies say something about the future, as the online test will.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa

from cambrian import inputs
from cambrian.errors import ConfigError, GateError
from cambrian.sqllimits import SqlLimitExceeded
from cambrian.trainer.config import ModelConfig, RewardConfig
from cambrian.trainer.datacheck import read_checked, require_valid
from cambrian.trainer.features import build_catalogue, id_space
from cambrian.trainer.rowframe import RowFrame, connect, evaluate
from cambrian.trainer.schema import BUILT_IN, USER_COLUMN, WORLD, DataSchema, load_schema, row_columns
from cambrian.trainer.splits import Split, TrainingSet, Written
from cambrian.trainer.sqlworker import SqlError, SqlWorker

# Columns the reward SQL may use over the simulated world (any declaration: reward_columns(schema)).
IMPRESSION_COLUMNS = tuple(row_columns(WORLD))

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
class Dataset(TrainingSet):
    val: Split  # held out: stays with the scorer; its signals are the declared proxies' (by name) and the label
    n_train_available: int = 0  # training rows before training.max_train_examples cut them
    schema: DataSchema = WORLD  # the declaration the rows were read through: its proxies score the model


def source_schema(data_dir: str | Path, schema: DataSchema | str | None = None) -> DataSchema:
    """The declaration a source's tables are read through: `schema` when given (a DataSchema, a built-in name or
    a YAML file), else the one a data directory's world.json names (`"declaration"`: a built-in name or a YAML
    file inside the folder, as `cambrian data fetch` writes it), else the simulated world's."""
    if isinstance(schema, DataSchema):
        return schema
    if schema is not None:
        return load_schema(schema)
    text = str(data_dir)
    if "://" in text and not text.startswith("file://"):
        return WORLD
    folder = inputs.data_dir(Path(text.removeprefix("file://")))
    try:
        meta = json.loads((folder / "world.json").read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{data_dir}: unreadable data directory: {exc}") from None
    if "features" in meta:
        raise ConfigError(f"{folder / 'world.json'}: \"features\" is no longer read: the folder's declaration decides "
                          "(\"declaration\": a built-in name or a YAML file in the folder)",
                          hint="a folder converted by an older `cambrian movielens`: run `cambrian movielens --out DIR` again")
    named = meta.get("declaration")
    if not named or named == WORLD.name:
        return WORLD
    by_name = {**BUILT_IN, **{s.name: s for s in BUILT_IN.values()}}
    try:
        return by_name[named] if named in by_name else load_schema(folder / str(named))
    except ConfigError as exc:  # its message starts "--schema PATH:", the option of `cambrian data check`
        why = str(exc).split(": ", 1)[-1]
        raise ConfigError(f"{folder / 'world.json'}: declaration {named!r}: {why}", hint=exc.hint) from None


def read_source(data_dir: str | Path, schema: DataSchema | str | None = None) -> tuple[DataSchema, dict[str, pd.DataFrame]]:
    """A source's declared tables in memory (source_schema); a source that fails the data check is refused here."""
    declared = source_schema(data_dir, schema)
    return declared, read_checked(declared, str(data_dir))


@lru_cache(maxsize=1)
def _scalar_functions() -> frozenset[str]:
    con = connect()
    try:
        rows = con.execute("SELECT DISTINCT lower(function_name) FROM duckdb_functions() "
                           "WHERE function_type IN ('scalar', 'macro')").fetchall()
    finally:
        con.close()
    return frozenset(name for (name,) in rows
                     if name not in _DENIED_FUNCTIONS and not name.startswith(_DENIED_PREFIXES))


def _sql_problem(tree: dict, columns: tuple[str, ...], table: str) -> str | None:
    """Walk DuckDB's parse tree of `SELECT <expr>`: one select item, no FROM or clauses, and every node an
    expression over `columns` (no subqueries, windows, aggregates, table functions, lambdas)."""
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
                if not names or names[-1] not in {c.lower() for c in columns} or names[:-1] not in ([], [table.lower()]):
                    return f"unknown column {'.'.join(names)!r}"
            if cls == "FUNCTION":
                name = str(item.get("function_name", "")).lower()
                if item.get("schema") not in ("", None, "main", "pg_catalog") or name not in allowed_functions:
                    return f"function {name!r} is not allowed (scalar functions of the row only)"
                if item.get("filter") or (item.get("order_bys") or {}).get("orders") or item.get("distinct"):
                    return f"aggregate syntax in {name!r} is not allowed"
        todo.extend(v for k, v in item.items() if isinstance(v, (dict, list)))
    return None


def reward_columns(schema: DataSchema) -> tuple[str, ...]:
    """The columns a reward may read: one joined interaction row of the declaration (trainer/schema.py row_columns:
    the interactions table's columns, the signals and features of the joined tables, and the declared `label`)."""
    return tuple(row_columns(schema))


def check_reward_sql(expr: str, what: str, schema: DataSchema = WORLD) -> None:
    """Gate stage reward_sql, on DuckDB's own parse of the expression (never on its text): one scalar expression
    over the declaration's reward columns; a column it does not declare is refused in one line."""
    columns = reward_columns(schema)
    hint = f"declared columns ({schema.name}): {', '.join(columns)}"
    if not isinstance(expr, str):
        raise GateError("reward_sql", f"reward {what} must be a SQL expression (text), not {type(expr).__name__}")
    if not expr.strip():
        raise GateError("reward_sql", f"reward {what} is empty")
    if len(expr) > MAX_SQL_CHARS:
        raise GateError("reward_sql", f"reward {what} is {len(expr)} characters; the limit is {MAX_SQL_CHARS}")
    con = connect()
    try:
        tree = json.loads(con.execute("SELECT json_serialize_sql(?)", ["SELECT " + expr]).fetchone()[0])
    except (duckdb.Error, ValueError, TypeError) as exc:
        raise GateError("reward_sql", f"reward {what} could not be parsed: {str(exc).splitlines()[0]}", hint=hint) from None
    finally:
        con.close()
    if tree.get("error"):
        raise GateError("reward_sql", f"reward {what} does not parse: {tree.get('error_message', 'syntax error')}",
                        hint=hint)
    problem = _sql_problem(tree, columns, schema.interactions)
    if problem:
        raise GateError("reward_sql", f"reward {what} must be one SQL expression over the declared columns of "
                        f"{schema.name!r}: {problem}", hint=hint)


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


def _reward_values(df: pd.DataFrame, reward: RewardConfig, schema: DataSchema = WORLD,
                   worker: SqlWorker | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The reward's label and weight per interaction with DuckDB over the joined rows (trainer/rowframe.py), each
    row checked (the expressions were checked by check_reward_sql). Evaluated under the trusted side's limits
    (trainer/sqlworker.py): a reward past one fails its Hypothesis, like any bad reward."""
    columns = list(reward_columns(schema))
    try:
        out = evaluate(df[columns], {"label": reward.label, "weight": reward.weight}, worker)
    except SqlLimitExceeded as exc:
        raise GateError("reward_sql", f"reward SQL {exc}",
                        hint="a reward is a cheap expression of one row's columns") from None
    except SqlError as exc:
        raise GateError("reward_sql", f"reward SQL failed: {exc}",
                        hint=f"declared columns ({schema.name}): {', '.join(columns)}") from None
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


def reward_labels(df: pd.DataFrame, reward: RewardConfig, schema: DataSchema = WORLD) -> tuple[np.ndarray, np.ndarray]:
    """Evaluate the reward's label and weight expressions over joined rows; validate them (gate stage reward_sql)."""
    check_reward_sql(reward.label, "label", schema)
    check_reward_sql(reward.weight, "weight", schema)
    label, weight = _reward_values(df, reward, schema)
    totals = _RewardTotals()
    totals.add(label, weight)
    totals.check()
    return label, weight


def _oldest_kept(per_day: dict[int, int], cutoff: int, n: int) -> tuple[int, int]:
    """Where the most recent `n` of the training rows (days before `cutoff`, counted per day) begin: the oldest
    day they reach and how many rows of that day, the first read, fall outside them. By day, not by the order
    a source streams its rows in (a folder of part files may hold its newest days first)."""
    left = n
    for day in sorted((d for d in per_day if d < cutoff), reverse=True):
        if per_day[day] >= left:
            return day, per_day[day] - left
        left -= per_day[day]
    raise ValueError(f"{n} training rows asked of days holding {n - left}")


def train_file(rank: int, world: int) -> str:
    """The training rows of worker `rank` of `world` in the contained trainer's input folder."""
    from cambrian.trainer.distributed import shard_name

    return "train.parquet" if world == 1 else shard_name(rank, world)


def prepare(data_dir: str | Path, config: ModelConfig, folder: Path | None, workers: int = 1,
            schema: DataSchema | str | None = None) -> Dataset:
    """The data set in one streaming pass over the interactions (after the data check's own), read through the
    source's declaration (source_schema): training rows go to Parquet files in `folder` as they are read (one per
    worker, rows dealt round-robin and cut to equal length, trainer/rows.py), the held-out days stay in memory for
    the scorer with the declared label and proxy signals, and the vocabularies and statistics come from the ids the
    kept training rows carry. Memory holds the joined tables (users, items, per-user days), the held-out split and
    one batch, never the training split. `folder` None: count only."""
    from cambrian.trainer.distributed import shard_of
    from cambrian.trainer.features import checked_ids
    from cambrian.trainer.rows import RowWriter
    from cambrian.trainer.sources import close, open_source, read_tables

    schema = source_schema(data_dir, schema)
    check_reward_sql(config.reward.label, "label", schema)
    check_reward_sql(config.reward.weight, "weight", schema)
    text, key = str(data_dir), schema.interactions
    user_col, item_col = schema.user_id, schema.item_id
    source = open_source(text)
    writers: list[RowWriter] = []
    rows_of: RowFrame | None = None
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
        first_day, cut_first = _oldest_kept(per_day, cutoff, n)
        if workers > 1:
            shard_of(np.zeros(0, np.int64), n, workers)  # refuses too few rows before any is read
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
            writers = [RowWriter(folder / train_file(r, workers)) for r in range(workers)]
        rows_of = RowFrame.build(schema, small, {"long_watch_seconds": config.reward.long_watch_seconds})
        table = schema.tables[key]
        found = source.arrow_schema(key, table)
        wanted = pa.schema([found.field(c) for c in table.columns])
        totals, val_totals = _RewardTotals(), _RewardTotals()
        counts = [np.zeros(0, np.int64), np.zeros(0, np.int64)]  # training rows per user id, per item id
        top = [-1, -1]
        seen = 0  # training rows read so far, kept or not
        kept = 0  # training rows kept so far: their index among the n, in the order they are read
        seen_first = 0  # rows of first_day read so far
        held_out: list[pd.DataFrame] = []
        for batch in source.batches(key, table, list(table.columns)):
            df = pa.Table.from_batches([batch]).cast(wanted).to_pandas()
            for i, column in enumerate((user_col, item_col)):
                top[i] = max(top[i], int(checked_ids(df, column, key).max()))
            days = rows_of.days(df)
            is_val = days >= cutoff
            seen += int((~is_val).sum())
            # the most recent n: the days after first_day, and first_day's rows but the first cut_first read
            on_first = np.flatnonzero(days == first_day)
            keep = ~is_val & (days > first_day)
            keep[on_first[seen_first + np.arange(len(on_first)) >= cut_first]] = True
            seen_first += len(on_first)
            index = kept + np.arange(int(keep.sum()))  # its place among the kept rows
            kept += len(index)
            # the rows cut by max_train_examples are neither joined nor labelled: most of a capped source's rows
            used = is_val | keep
            if not used.any():
                continue
            if not used.all():
                df, days, is_val = df.loc[used].reset_index(drop=True), days[used], is_val[used]
            df = rows_of.join(df, days)
            label, weight = _reward_values(df, config.reward, schema, rows_of.sql)
            rows = np.flatnonzero(~is_val)  # every training row left is kept
            user, item = df[user_col].to_numpy(np.int64)[rows], df[item_col].to_numpy(np.int64)[rows]
            totals.add(label[rows], weight[rows])
            for i, ids in enumerate((user, item)):
                add = np.bincount(ids, minlength=len(counts[i]))
                add[:len(counts[i])] += counts[i]
                counts[i] = add
            if writers:
                rank = shard_of(index, n, workers) if workers > 1 else np.zeros(len(rows), np.int64)
                for r, writer in enumerate(writers):
                    mine = rank == r
                    writer.write(user[mine], item[mine], label[rows][mine], weight[rows][mine])
            if is_val.any():
                val_rows = df.loc[is_val].reset_index(drop=True)
                part = rows_of.proxy_signals(val_rows)
                part[USER_COLUMN], part["__item"] = val_rows[user_col].to_numpy(np.int64), val_rows[item_col].to_numpy(np.int64)
                part["__label"], part["__weight"] = label[is_val], weight[is_val]
                val_totals.add(label[is_val], weight[is_val])
                held_out.append(part)
        if seen != available or kept != n:
            raise ConfigError(f"{data_dir}: {key} gave {seen} training rows, the data check counted {available}",
                              hint="was the source written to while it was read?")
    finally:
        for writer in writers:
            writer.close()
        if rows_of is not None:
            rows_of.close()
        close(source)
    totals.check()
    val_totals.check()
    n_users, n_items = (max(a, b + 1) for a, b in zip(id_space(schema, small), top))
    # vocabularies and statistics from the rows the model trains on: a held-out day's new category is unknown
    catalogue = build_catalogue(schema, small, counts[0], counts[1], n_users, n_items)
    # the held-out rows in (user, item) order, never the log's: the predictor runs candidate code over all of them at
    # once, and in log order a user's rows come slate by slate, so a model could read each row's position from its
    # place in the batch (and positions are clicked differently) and score better than it ranks
    val = pd.concat(held_out, ignore_index=True).sort_values([USER_COLUMN, "__item"], kind="stable", ignore_index=True)
    signals = val[[p.name for p in schema.proxies] + ["label", USER_COLUMN]]
    val_split = Split(catalogue.features(val[USER_COLUMN].to_numpy(np.int64), val["__item"].to_numpy(np.int64)),
                      np.array(val["__label"], np.float32), np.array(val["__weight"], np.float32), signals)
    written = Written([w.path for w in writers], n)
    return Dataset(catalogue.spec, catalogue, written, val_split, n_train_available=available, schema=schema)


def load_dataset(data_dir: str | Path, config: ModelConfig, schema: DataSchema | str | None = None) -> Dataset:
    """The data set with its training split in memory (prepare, then its rows read whole): for in-process
    training and benchmarks; `cambrian train` hands the contained trainer the Parquet files instead."""
    import tempfile

    import pyarrow.parquet as pq

    from cambrian.trainer.rows import read_columns

    with tempfile.TemporaryDirectory(prefix="cambrian-rows-") as tmp:
        data = prepare(data_dir, config, Path(tmp), schema=schema)
        user, item, label, weight = read_columns(pq.read_table(data.train.files[0]))
    data.train = Split(data.catalogue.features(user, item), label, weight, None)
    return data
