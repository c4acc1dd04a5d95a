"""One batch of interactions as the rows that labels, rewards and proxies read, by any declaration.

Each interaction gets its day (the declaration's time column in days), the columns of the tables joined to it
(a per-(user, day) table on the user id and the day, a user or item table on its id: trainer/schema.py join_of)
and the declared label; DuckDB then evaluates the reward's and the proxies' expressions over those rows. The
joined tables are held in memory (they grow with users x days and items, not with interactions).
"""

from __future__ import annotations

from dataclasses import dataclass

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa

from cambrian.errors import ConfigError
from cambrian.sqllimits import SqlLimitExceeded
from cambrian.trainer.datacheck import day_numbers
from cambrian.trainer.expressions import Compiled
from cambrian.trainer.schema import DataSchema, Proxy, row_columns
from cambrian.trainer.sqlworker import SqlError, SqlWorker

DAY = "__day"  # the interaction's day number, beside its own columns


def connect() -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB without file or network access, to parse expressions (json_serialize_sql): evaluating
    them is the SqlWorker's, under the trusted side's limits."""
    return duckdb.connect(config={"enable_external_access": False})


def evaluate(df: pd.DataFrame, expressions: dict[str, str], worker: SqlWorker | None = None) -> dict[str, np.ndarray]:
    """Each DuckDB expression over the rows of `df`, as float64 (NULL as a masked value: the caller decides),
    through `worker` (else one of its own): a child process under the trusted side's limits (trainer/sqlworker.py).
    SqlError when DuckDB refuses an expression, SqlLimitExceeded past a limit."""
    own = worker is None
    worker = SqlWorker() if own else worker
    try:
        return worker.evaluate(df, expressions)
    finally:
        if own:
            worker.close()


@dataclass
class RowFrame:
    """What a declaration needs to turn batches of its interactions into joined rows."""

    schema: DataSchema
    names: dict[str, str]  # joined column -> table.column
    lookups: list[tuple[str, str, pd.DataFrame]]  # (table, join kind, its needed columns indexed by the join key)
    label: Compiled
    proxies: list[tuple[Proxy, Compiled]]
    params: dict[str, float]
    sql: SqlWorker  # every batch's expressions, the caller's too (close() when done): one process for a pass

    @classmethod
    def build(cls, schema: DataSchema, small: dict[str, pd.DataFrame], params: dict[str, float]) -> "RowFrame":
        if schema.label is None:
            raise ConfigError(f"declaration {schema.name!r} declares no label: training needs one",
                              hint="label: {column: table.column, min: ..., max: ..., expr: ...}")
        names = row_columns(schema)
        lookups = []
        for table, frame in small.items():
            needed = [c for c, ref in names.items() if ref.split(".", 1)[0] == table]
            if not needed:
                continue
            kind = schema.join_of(table)
            if kind == "row":  # its columns are the batch's own: joined on itself, a row would take another's label
                continue
            t = schema.tables[table]
            if kind == "user_day":
                key = pd.MultiIndex.from_arrays([day_numbers(pa.array(frame[t.time]), t.time_unit),
                                                 frame[schema.user_id].to_numpy(np.int64)])
            else:
                key = pd.Index(frame[schema.user_id if kind == "user" else schema.item_id].to_numpy(np.int64))
            indexed = frame[needed].set_index(key)
            lookups.append((table, kind, indexed[~indexed.index.duplicated()]))
        try:
            compiled = schema.compiled()
        except ValueError as exc:
            raise ConfigError(f"declaration {schema.name!r}: {exc}") from None
        proxies = [(p, compiled[f"proxies[{p.name}].signal"]) for p in schema.proxies]
        return cls(schema, names, lookups, compiled["label.expr"], proxies, params, SqlWorker())

    def close(self) -> None:
        self.sql.close()

    def _sql(self, compiled: Compiled) -> str:
        return compiled.duckdb({ref: c for c, ref in self.names.items()}, self.params)

    def days(self, df: pd.DataFrame) -> np.ndarray:
        """Each interaction's day number."""
        t = self.schema.tables[self.schema.interactions]
        return day_numbers(pa.array(df[t.time]), t.time_unit) if len(df) else np.zeros(0, np.int64)

    def join(self, df: pd.DataFrame, days: np.ndarray) -> pd.DataFrame:
        """The batch with its day (column DAY: `days`, from days()), the joined tables' columns and the declared
        label (`label`)."""
        s = self.schema
        df[DAY] = days
        user = df[s.user_id].to_numpy(np.int64)
        for _, kind, indexed in self.lookups:
            if kind == "user_day":
                key = pd.MultiIndex.from_arrays([df[DAY].to_numpy(np.int64), user])
            else:
                key = user if kind == "user" else df[s.item_id].to_numpy(np.int64)
            found = indexed.reindex(key)
            for column in found.columns:
                df[column] = found[column].to_numpy()
        try:
            label = evaluate(df, {"label": self._sql(self.label)}, self.sql)["label"]
        except (SqlError, SqlLimitExceeded) as exc:
            raise ConfigError(f"the label of declaration {s.name!r} ({self.label.text}): {exc}") from None
        if np.ma.isMaskedArray(label) and label.mask.any():
            raise ConfigError(f"the label of declaration {s.name!r} ({self.label.text}) is NULL for "
                              f"{int(np.ma.getmaskarray(label).sum())} interactions")
        df["label"] = np.asarray(np.ma.getdata(label), np.float64)
        return df

    def proxy_signals(self, df: pd.DataFrame) -> pd.DataFrame:
        """Each proxy's signal on these (held-out) rows, by proxy name, and the declared label."""
        try:
            values = evaluate(df, {p.name: self._sql(c) for p, c in self.proxies}, self.sql) if self.proxies else {}
        except (SqlError, SqlLimitExceeded) as exc:
            raise ConfigError(f"the proxies of declaration {self.schema.name!r}: {exc}") from None
        out = {}
        for proxy, compiled in self.proxies:
            v = values[proxy.name]
            if np.ma.isMaskedArray(v) and v.mask.any():
                raise ConfigError(f"proxy {proxy.name} ({compiled.text}) is NULL for {int(np.ma.getmaskarray(v).sum())} "
                                  "held-out rows", hint="COALESCE a joined column that a row may lack")
            out[proxy.name] = np.asarray(np.ma.getdata(v), np.float64)
            if proxy.kind == "top_share" and (negative := int((out[proxy.name] < 0).sum())):
                raise ConfigError(f"proxy {proxy.name} ({compiled.text}) is negative for {negative} held-out rows: a "
                                  "top_share is a share of its signal", hint="GREATEST(..., 0) or another kind")
        out["label"] = df["label"].to_numpy(np.float64)
        return pd.DataFrame(out)
