"""A user's own small sources through `cambrian data check`, `data fetch` and prepare(): each row keeps its own
label, a snapshot reads back through its declaration, and bad values are refused in one line, in bounded time."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from cambrian.errors import ConfigError
from cambrian.trainer.config import ModelConfig
from cambrian.trainer.data import prepare, read_source, source_schema
from cambrian.trainer.datacheck import check_source
from cambrian.trainer.rowframe import RowFrame
from cambrian.trainer.schema import USER_COLUMN, parse_schema
from cambrian.trainer.sources import open_source, read_tables

EVENTS = {"user_id": "int", "item_id": "int", "day": "int", "click": "int"}


def declaration(tables: dict, **more) -> dict:
    return {"name": "shop", "interactions": "events", "tables": tables, "signals": ["events.click"],
            "label": {"column": "events.click", "min": 0, "max": 1}, **more}


def write(root, frame: pd.DataFrame, raw: dict, name: str = "events"):
    root.mkdir(exist_ok=True)
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), root / name)
    (root / "shop.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    return root / "shop.yaml"


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cambrian.cli", *args], capture_output=True, text=True, timeout=60)


# --- a declaration of one table -----------------------------------------------------------------------------

def _one_table(tmp_path):
    """Random clicks over 10 days; on the held-out last day each user has one row, so rows compare by user."""
    rng = np.random.default_rng(0)
    n = 2000
    frame = pd.DataFrame({"user_id": np.arange(n) % 200, "item_id": rng.integers(0, 20, n),
                          "day": np.arange(n) // 200, "click": rng.integers(0, 2, n)})
    raw = declaration({"events": {"columns": EVENTS, "time": "day"}})
    return frame, write(tmp_path / "one", frame, raw)


def test_a_one_table_declaration_labels_each_row_with_its_own_click(tmp_path):
    frame, path = _one_table(tmp_path)
    data = prepare(path.parent, ModelConfig(), None, schema=str(path))
    held = frame[frame.day == 9].sort_values("user_id")
    assert len(data.val) == len(held) == 200
    np.testing.assert_array_equal(data.val.signals[USER_COLUMN], held.user_id)
    # joined onto itself by item id, every row took the click of the item's first row: per-item labels, AUC 1.0
    np.testing.assert_array_equal(data.val.label, held.click.astype(np.float32))


def test_reading_no_table_reads_none(tmp_path):
    frame, path = _one_table(tmp_path)
    schema = parse_schema(yaml.safe_load(path.read_text()), "shop")
    assert read_tables(schema, open_source(str(path.parent)), []) == {}
    assert list(read_tables(schema, open_source(str(path.parent)))) == ["events"]


def test_the_interactions_table_is_never_joined_onto_its_own_rows(tmp_path):
    frame, path = _one_table(tmp_path)
    schema = parse_schema(yaml.safe_load(path.read_text()), "shop")
    rows = RowFrame.build(schema, {"events": frame}, {"long_watch_seconds": 60})
    try:
        batch = frame.copy()
        joined = rows.join(batch, rows.days(batch))
    finally:
        rows.close()
    np.testing.assert_array_equal(joined["label"], frame.click)
    np.testing.assert_array_equal(joined["click"], frame.click)


# --- data fetch ------------------------------------------------------------------------------------------------

def test_the_readme_shop_declared_without_paths_fetches_and_reads_back(tmp_path):
    duckdb = pytest.importorskip("duckdb")
    from cambrian.trainer.fetch import fetch

    db = tmp_path / "shop.duckdb"
    con = duckdb.connect(str(db))
    con.execute("CREATE TABLE events AS SELECT (i % 20)::BIGINT AS user_id, (i % 7)::BIGINT AS item_id, "
                "(i // 50)::BIGINT AS day, (i % 2)::BIGINT AS click FROM range(400) t(i)")
    con.execute("CREATE TABLE items AS SELECT i::BIGINT AS item_id, 'c' || (i % 2) AS category FROM range(7) t(i)")
    con.close()
    raw = declaration({"events": {"columns": EVENTS, "time": "day", "order": ["day", "user_id"]},
                       "items": {"columns": {"item_id": "int", "category": "string"}}},
                      categorical=["items.category"])
    schema = parse_schema(raw, "shop")
    assert check_source(schema, open_source(f"duckdb://{db}")).ok
    meta = fetch(f"duckdb://{db}", tmp_path / "snap", schema)
    assert meta["rows"] == {"events": 400, "items": 7}
    # the snapshot reads back through the declaration its world.json names, as training reads it
    assert source_schema(tmp_path / "snap") == schema
    _, tables = read_source(tmp_path / "snap")
    assert len(tables["events"]) == 400 and tables["items"]["category"].tolist() == [f"c{i % 2}" for i in range(7)]


# --- data check: values --------------------------------------------------------------------------------------

def test_nan_labels_fail_the_check_and_the_fetch(tmp_path):
    from cambrian.trainer.fetch import fetch

    frame = pd.DataFrame({"user_id": np.arange(40) % 5, "item_id": np.arange(40) % 3, "day": np.arange(40) // 10,
                          "rating": np.where(np.arange(40) % 7 == 0, np.nan, 3.0)})
    raw = declaration({"events": {"columns": {**EVENTS, "rating": "float"}, "time": "day"}},
                      signals=["events.rating"], label={"column": "events.rating", "min": 1, "max": 5})
    del raw["tables"]["events"]["columns"]["click"]
    path = write(tmp_path / "nan", frame, raw)
    schema = parse_schema(raw, "shop")
    problems = [str(p) for p in check_source(schema, open_source(str(path.parent))).problems]
    assert problems == ["events.rating: 6 row(s) with no label (null or NaN)"]
    with pytest.raises(ConfigError, match="events.rating: 6 row"):
        fetch(str(path.parent), tmp_path / "snap", schema)


def _dated(tmp_path, times: list[int], unit: str):
    n = len(times)
    frame = pd.DataFrame({"user_id": [1] * n, "item_id": [2] * n, "ts": times, "click": [0, 1] * (n // 2) + [1] * (n % 2)})
    raw = declaration({"events": {"columns": {**EVENTS, "ts": "int"}, "time": "ts", "time_unit": unit}})
    del raw["tables"]["events"]["columns"]["day"]
    return write(tmp_path / unit, frame, raw)


def test_a_row_in_epoch_milliseconds_is_one_problem_line_not_a_traceback(tmp_path):
    path = _dated(tmp_path, [1_700_000_000 + 3600 * i for i in range(100)] + [1_700_000_000_000], "epoch_seconds")
    result = cli("data", "check", str(path.parent), "--schema", str(path))
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.splitlines()[0] == ("events.ts: 1 row(s) dated outside years 1 to 9999 (e.g. 19675925 days "
                                             "after 1970-01-01): is its time_unit (epoch_seconds) the column's?")
    assert len(result.stderr.splitlines()) == 2  # that problem, then the summary


def test_a_day_far_away_is_counted_not_walked(tmp_path):
    path = _dated(tmp_path, list(range(100)) + [10**12], "day")
    result = cli("data", "check", str(path.parent), "--schema", str(path))  # walked day by day: hours
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.splitlines()[0] == ("events.ts: 999999999900 day(s) with no rows between day 0 and day "
                                             "1000000000000: day 100, day 101, day 102, day 103, day 104, ...")


# --- training.max_train_examples ---------------------------------------------------------------------------

def test_max_train_examples_keeps_the_most_recent_days_whatever_order_the_files_hold(tmp_path):
    import collections

    root = tmp_path / "parts"
    (root / "events").mkdir(parents=True)

    def part(name: str, days: list[int]) -> None:  # 200 rows a day; user_id: each row's place in its day
        day = np.repeat(days, 200)
        pq.write_table(pa.table({"user_id": np.tile(np.arange(200), len(days)), "item_id": day, "day": day,
                                 "click": np.arange(len(day)) % 2}), root / "events" / name, row_group_size=64)

    part("part-0.parquet", [5, 6, 7])  # a warehouse export, newest days first
    part("part-1.parquet", [0, 1, 2, 3, 4])
    path = root / "shop.yaml"
    path.write_text(yaml.safe_dump(declaration({"events": {"columns": EVENTS, "time": "day"}})))
    config = ModelConfig.model_validate({"training": {"validation_days": 1, "max_train_examples": 500}})
    data = prepare(root, config, tmp_path / "rows", schema=str(path))
    kept = pq.read_table(tmp_path / "rows" / "train.parquet").to_pandas()
    assert data.n_train_available == 1400 and len(kept) == 500
    assert dict(collections.Counter(kept["item"])) == {6: 200, 5: 200, 4: 100}  # day 7 is held out
    assert sorted(kept.loc[kept["item"] == 4, "user"]) == list(range(100, 200))  # of day 4, the last rows read


# --- ids -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("column, bad, line", [
    # (max id + 1) embedding rows: 74.5 GiB allocated before anything failed
    ("item_id", 10**10, "events.item_id: ids up to 10000000000: training needs ids of at most 10000000 (one embedding "
                        "row per id up to the largest); number them densely"),
    # an id below 0 names no embedding row: before, the check passed it and only the training step failed on it
    ("user_id", -3, "events.user_id: ids down to -3: training needs ids of at least 0 (an id is an embedding row); "
                    "number them from 0"),
])
def test_an_id_training_cannot_embed_is_refused_by_the_check_in_one_line_before_training(tmp_path, column, bad, line):
    frame = pd.DataFrame({"user_id": np.arange(40) % 5, "item_id": np.arange(40) % 4,
                          "day": np.arange(40) // 10, "click": np.arange(40) % 2})
    frame.loc[3, column] = bad
    path = write(tmp_path / "ids", frame, declaration({"events": {"columns": EVENTS, "time": "day"}}))
    result = cli("data", "check", str(path.parent), "--schema", str(path))
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.splitlines()[0] == line
    with pytest.raises(ConfigError, match=line.split(":")[0] + ": ids"):
        prepare(path.parent, ModelConfig(), None, schema=str(path))
