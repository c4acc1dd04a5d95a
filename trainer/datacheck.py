"""`cambrian data check`: a source against its declaration, before any training.

Each problem is one line naming the table and the column: a table or column that is missing, a column of
another type than declared, ids that are null, negative or above MAX_ID, rows without a day or dated outside the
calendar, days inside the logged span with no interactions at all, labels outside the declared range, and rows
dated after the last day training may see (the declaration's `as_of`, else the interactions' last day): future
days leaking into training.
Tables are streamed in batches (trainer/sources.py), so memory stays bounded by the batch size and the
number of distinct days, whatever the size of the source.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cambrian.trainer.schema import DataSchema, Table
from cambrian.errors import ConfigError
from cambrian.trainer.sources import (BATCH_ROWS, FrameSource, Source, SourceError, close, column_problems, open_source,
                                      read_tables, redact)

_SHOWN_DAYS = 5
# Training gives every id up to the largest its own embedding row: a sparse id of 10**10 would allocate 74 GiB.
MAX_ID = 10_000_000
_EPOCH = dt.date(1970, 1, 1)
# The days a calendar time column can name (years 1 to 9999): beyond them a date is a wrong time unit
# (epoch milliseconds in an epoch_seconds column), not a day of the log.
_CALENDAR = ((dt.date.min - _EPOCH).days, (dt.date.max - _EPOCH).days)


@dataclass(frozen=True)
class Problem:
    table: str
    column: str | None
    message: str

    def __str__(self) -> str:
        return f"{self.table}.{self.column}: {self.message}" if self.column else f"{self.table}: {self.message}"


@dataclass
class TableStats:
    """What one streaming pass over a table found: bounded by the number of days, not of rows."""

    rows: int = 0
    null_ids: Counter = field(default_factory=Counter)
    max_ids: dict[str, int] = field(default_factory=dict)
    min_ids: dict[str, int] = field(default_factory=dict)
    undated: int = 0
    rows_per_day: Counter = field(default_factory=Counter)
    label_nulls: int = 0
    label_outside: int = 0
    label_min: float = np.inf
    label_max: float = -np.inf


@dataclass
class CheckReport:
    schema: str
    source: str
    tables: dict[str, TableStats]
    problems: list[Problem]

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict:
        return {"ok": self.ok, "schema": self.schema, "source": self.source,
                "tables": {k: {"rows": s.rows, "days": len(s.rows_per_day)} for k, s in self.tables.items()},
                "problems": [str(p) for p in self.problems]}


def day_numbers(values: pa.Array, unit: str) -> np.ndarray:
    """A time column's values as integer days (a day index, or days since 1970-01-01), nulls dropped."""
    values = values.drop_null()
    if unit == "day":
        return values.to_numpy(zero_copy_only=False).astype(np.int64)
    if unit == "epoch_seconds":
        return np.floor_divide(values.to_numpy(zero_copy_only=False).astype(np.int64), 86_400)
    if pa.types.is_date(values.type):
        return values.cast(pa.date32()).cast(pa.int32()).to_numpy(zero_copy_only=False).astype(np.int64)
    seconds = pc.cast(values, pa.timestamp("s", tz=values.type.tz), safe=False).cast(pa.int64())
    return np.floor_divide(seconds.to_numpy(zero_copy_only=False), 86_400)


def _dated(day: int, unit: str) -> bool:
    """Whether a day number is a day of a log in this time unit (a day index is any integer)."""
    return unit == "day" or _CALENDAR[0] <= day <= _CALENDAR[1]


def _day_text(day: int, unit: str) -> str:
    if not _dated(day, unit):
        return f"{day} days after 1970-01-01"
    return f"day {day}" if unit == "day" else (_EPOCH + dt.timedelta(days=int(day))).isoformat()


def _columns(key: str, table: Table, found: pa.Schema, problems: list[Problem]) -> set[str]:
    """The declared columns that are there with a usable type; a problem for each one that is not."""
    wrong = column_problems(table, found)
    problems += [Problem(key, column, message) for column, message in wrong.items()]
    return {c for c in table.columns if c not in wrong}


def _scan(schema: DataSchema, key: str, table: Table, source: Source, usable: set[str], batch_rows: int) -> TableStats:
    stats = TableStats()
    ids = [c for c in schema.id_columns(key) if c in usable]
    time = table.time if table.time in usable else None
    label_table, _ = schema.column(schema.label.column) if schema.label else (None, None)
    label = schema.label.column.split(".", 1)[1] if label_table == key else None
    label = label if label in usable else None
    columns = sorted(set(ids) | {c for c in (time, label) if c})
    if not columns:  # nothing to stream: count rows through the first declared usable column
        columns = sorted(usable)[:1]
    if not columns:
        return stats
    for batch in source.batches(key, table, columns, batch_rows):
        stats.rows += batch.num_rows
        for column in ids:
            stats.null_ids[column] += batch.column(column).null_count
            low, top = pc.min_max(batch.column(column)).values()
            if top.as_py() is not None:
                stats.max_ids[column] = max(stats.max_ids.get(column, top.as_py()), top.as_py())
                stats.min_ids[column] = min(stats.min_ids.get(column, low.as_py()), low.as_py())
        if time:
            values = batch.column(time)
            stats.undated += values.null_count
            days, counts = np.unique(day_numbers(values, table.time_unit), return_counts=True)
            stats.rows_per_day.update(dict(zip(days.tolist(), counts.tolist())))
        if label:
            values = batch.column(label)
            present = values.drop_null().cast(pa.float64()).to_numpy(zero_copy_only=False)
            nan = np.isnan(present)  # Arrow counts NaN as a value; training finds no label in it
            stats.label_nulls += values.null_count + int(nan.sum())
            present = present[~nan]
            if present.size:
                stats.label_min = min(stats.label_min, float(present.min()))
                stats.label_max = max(stats.label_max, float(present.max()))
                stats.label_outside += int(((present < schema.label.min) | (present > schema.label.max)).sum())
    return stats


def _value_problems(schema: DataSchema, key: str, table: Table, stats: TableStats) -> list[Problem]:
    out = [Problem(key, c, f"{n} row(s) with a null id") for c, n in stats.null_ids.items() if n]
    out += [Problem(key, c, f"ids up to {top}: training needs ids of at most {MAX_ID} (one embedding row per id up "
                            "to the largest); number them densely") for c, top in stats.max_ids.items() if top > MAX_ID]
    out += [Problem(key, c, f"ids down to {low}: training needs ids of at least 0 (an id is an embedding row); "
                            "number them from 0") for c, low in stats.min_ids.items() if low < 0]
    if table.time and stats.undated:
        out.append(Problem(key, table.time, f"{stats.undated} row(s) with no day"))
    wild = {d: n for d, n in stats.rows_per_day.items() if not _dated(d, table.time_unit)}
    if wild:
        out.append(Problem(key, table.time, f"{sum(wild.values())} row(s) dated outside years 1 to 9999 (e.g. "
                                            f"{_day_text(next(iter(wild)), table.time_unit)}): is its time_unit "
                                            f"({table.time_unit}) the column's?"))
    if schema.label and schema.label.column.startswith(key + "."):
        column = schema.label.column.split(".", 1)[1]
        if stats.label_nulls:
            out.append(Problem(key, column, f"{stats.label_nulls} row(s) with no label (null or NaN)"))
        if stats.label_outside:
            out.append(Problem(key, column, f"{stats.label_outside} label(s) outside [{schema.label.min:g}, "
                                            f"{schema.label.max:g}] (found {stats.label_min:g} to {stats.label_max:g})"))
    return out


def _empty_days(days: list[int], shown: int = _SHOWN_DAYS) -> tuple[int, list[int]]:
    """How many days between the first and the last of the sorted distinct `days` have no rows, and the first
    `shown` of them: counted from the gaps, never day by day (one mis-dated row may span 10**12 days)."""
    if not days:
        return 0, []
    first: list[int] = []
    for a, b in zip(days, days[1:]):
        if len(first) >= shown:
            break
        first.extend(range(a + 1, min(b, a + 1 + shown - len(first))))
    return days[-1] - days[0] + 1 - len(days), first


def _gaps(key: str, table: Table, stats: TableStats, tolerated: int) -> list[Problem]:
    # every row undated, or dated outside the calendar: reported as such
    days = sorted(d for d in stats.rows_per_day if _dated(d, table.time_unit))
    n, empty = _empty_days(days)
    if n <= tolerated:
        return []
    shown = ", ".join(_day_text(d, table.time_unit) for d in empty) + (", ..." if n > len(empty) else "")
    allowed = f" (max_empty_days is {tolerated})" if tolerated else ""
    return [Problem(key, table.time, f"{n} day(s) with no rows{allowed} between {_day_text(days[0], table.time_unit)} "
                                     f"and {_day_text(days[-1], table.time_unit)}: {shown}")]


def _leakage(schema: DataSchema, scanned: dict[str, TableStats]) -> list[Problem]:
    events = schema.tables[schema.interactions]
    if schema.as_of is not None:
        cutoff, what = schema.as_of, "as_of"
    elif scanned.get(schema.interactions) and scanned[schema.interactions].rows_per_day:
        cutoff, what = max(scanned[schema.interactions].rows_per_day), f"the last day of {schema.interactions}"
    else:
        return []
    out = []
    for key, stats in scanned.items():
        table = schema.tables[key]
        if table.time is None or (key == schema.interactions and schema.as_of is None):
            continue
        late = sum(n for d, n in stats.rows_per_day.items() if d > cutoff)
        if late:
            out.append(Problem(key, table.time, f"{late} row(s) dated after {_day_text(cutoff, events.time_unit)} "
                                                f"({what}): future days would leak into training"))
    return out


def check_source(schema: DataSchema, source: Source, batch_rows: int = BATCH_ROWS) -> CheckReport:
    problems: list[Problem] = []
    scanned: dict[str, TableStats] = {}
    for key, table in schema.tables.items():
        try:
            found = source.arrow_schema(key, table)
        except SourceError as exc:
            problems.append(Problem(key, None, str(exc).removeprefix(f"table {key}: ")))
            continue
        usable = _columns(key, table, found, problems)
        stats = _scan(schema, key, table, source, usable, batch_rows)
        scanned[key] = stats
        problems += _value_problems(schema, key, table, stats)
        if key == schema.interactions:
            if stats.rows == 0:
                problems.append(Problem(key, None, "no rows"))
            elif table.time in usable:
                problems += _gaps(key, table, stats, schema.max_empty_days)
    problems += _leakage(schema, scanned)
    return CheckReport(schema.name, redact(source.uri), scanned, problems)


def require_valid(schema: DataSchema, source: Source, uri: str, batch_rows: int = BATCH_ROWS) -> CheckReport:
    """Training refuses a source that fails the check: the tables a loader read (a FrameSource, checked in
    memory) or the copy a fetch wrote (trainer/fetch.py), named by the source they came from."""
    report = check_source(schema, source, batch_rows)
    if not report.ok:
        raise ConfigError(f"{redact(uri)} fails the data check ({schema.name}): {report.problems[0]}",
                          hint=f"{len(report.problems)} problem(s) in all: `cambrian data check {redact(uri)}` lists them")
    return report


def read_checked(schema: DataSchema, uri: str) -> dict:
    """The declared tables of the source at `uri` as pandas frames, refused if they fail the check: the one
    way a loader (the world's trainer input, the MovieLens export) reads a declared source."""
    opened = open_source(uri)
    try:
        tables = read_tables(schema, opened)
    finally:
        close(opened)
    require_valid(schema, FrameSource(uri, tables), uri)
    return {key: table.to_pandas() for key, table in tables.items()}
