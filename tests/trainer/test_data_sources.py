"""Declared data (trainer/schema.py), one reader for Parquet folders, S3 and SQL warehouses (trainer/sources.py)
and `cambrian data check` (trainer/datacheck.py), against real servers started here: a private PostgreSQL
cluster and moto's S3 server on loopback."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from cambrian.errors import ConfigError
from cambrian.testing import dataservers
from cambrian.trainer.config import ModelConfig
from cambrian.trainer.data import load_dataset, read_source
from cambrian.trainer.datacheck import check_source
from cambrian.trainer.schema import MOVIELENS_100K, WORLD, DataSchema, load_schema
from cambrian.trainer.sources import SourceError, open_source, read_tables, redact

TABLES = ("impressions", "user_days", "items", "users")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("own") / "world"
    subprocess.run([sys.executable, "-m", "cambrian.cli", "world", "generate", "--users", "60", "--days", "4",
                    "--seed", "3", "--easy", "--out", str(out)], check=True, capture_output=True)
    return out


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    import os

    return subprocess.run([sys.executable, "-m", "cambrian.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=120)


def _same_dataset(a, b) -> None:
    for split in ("train", "val"):
        x, y = getattr(a, split), getattr(b, split)
        assert len(x) == len(y) > 0
        np.testing.assert_array_equal(x.label, y.label)
        np.testing.assert_array_equal(x.weight, y.weight)
        for name in x.features:
            np.testing.assert_array_equal(x.features[name], y.features[name])
    assert a.spec.n_users == b.spec.n_users and a.spec.n_items == b.spec.n_items


def _same_rows(a, b) -> None:
    """As _same_dataset, in any row order: a SQL table is read in its declared `order`, a Parquet file in its own
    (MovieLens as published is not sorted by time)."""
    for split in ("train", "val"):
        x, y = getattr(a, split), getattr(b, split)
        ox = np.lexsort((x.features["item"], x.features["user"]))
        oy = np.lexsort((y.features["item"], y.features["user"]))
        assert len(x) == len(y) > 0
        np.testing.assert_array_equal(x.label[ox], y.label[oy])
        for name in x.features:
            np.testing.assert_array_equal(x.features[name][ox], y.features[name][oy])


# --- the declaration ---------------------------------------------------------------------------------------

def test_world_and_movielens_are_declarations_of_one_type():
    assert isinstance(WORLD, DataSchema) and isinstance(MOVIELENS_100K, DataSchema)
    assert load_schema("movielens-100k") is MOVIELENS_100K
    assert "truth" not in " ".join(t.path or k for k, t in WORLD.tables.items())  # the hidden state is never declared


def test_a_declaration_that_names_an_undeclared_column_is_refused(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("name: mine\ninteractions: events\ntables:\n  events:\n    columns: {user_id: int, item_id: int, "
                    "day: int}\n    time: day\nnumeric: [events.price]\n")
    with pytest.raises(ConfigError, match="numeric.*events.price.*does not name a declared column"):
        load_schema(path)


def test_the_trainer_reads_the_world_through_its_declaration(world):
    schema, frames = read_source(world)
    assert schema == WORLD  # the world's own features: its declaration, unchanged
    for name in TABLES:
        frame, on_disk = frames[name], pd.read_parquet(world / f"{name}.parquet")
        pd.testing.assert_frame_equal(frame, on_disk[list(WORLD.tables[name].columns)])


def test_streaming_reads_batches_of_bounded_size(world):
    source = open_source(str(world))
    sizes = [b.num_rows for b in source.batches("impressions", WORLD.tables["impressions"], ["user_id"], 500)]
    assert max(sizes) <= 500 and len(sizes) > 2
    assert sum(sizes) == pq.read_metadata(world / "impressions.parquet").num_rows
    small, whole = check_source(WORLD, source, batch_rows=500), check_source(WORLD, source)
    assert small.ok and small.to_dict() == whole.to_dict()


def test_prepare_evaluates_every_batch_through_one_sql_process_and_ends_it(world, tmp_path, monkeypatch):
    """The expressions run in a child process under the trusted side's limits (trainer/sqlworker.py): one for the
    whole pass, not one per batch (a DuckDB connection alone costs about 19 ms of CPU), ended when it is done."""
    from cambrian.trainer import sqlworker
    from cambrian.trainer.data import prepare

    started, init = [], sqlworker.SqlWorker.__init__

    def counted(self, *a, **kw):
        init(self, *a, **kw)
        started.append(self)

    cls = type(open_source(str(world)))
    original = cls.batches
    monkeypatch.setattr(cls, "batches", lambda self, key, table, columns, batch_rows=0: original(self, key, table, columns, 500))
    monkeypatch.setattr(sqlworker.SqlWorker, "__init__", counted)
    config = ModelConfig.model_validate({"reward": {"weight": "1.0 + LEAST(watch_seconds, 600.0) / 60.0"}})
    data = prepare(world, config, tmp_path / "rows")
    n_batches = -(-pq.read_metadata(world / "impressions.parquet").num_rows // 500)
    assert n_batches >= 5 and len(started) == 1, (n_batches, len(started))
    assert started[0]._proc.poll() is not None  # ended
    monkeypatch.undo()
    again = prepare(world, config, tmp_path / "again")  # batches of the default size: the same rows and labels
    assert (tmp_path / "rows" / "train.parquet").read_bytes() == (tmp_path / "again" / "train.parquet").read_bytes()
    np.testing.assert_array_equal(data.val.label, again.val.label)


# --- cambrian data check -----------------------------------------------------------------------------------

def _broken_copy(world, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(world, bad)
    imp = pd.read_parquet(bad / "impressions.parquet")
    imp = imp[imp["day"] != 2].drop(columns=["watch_seconds"])  # a lost day and a lost column
    imp.loc[imp.index[0], "click"] = 3  # a label out of [0, 1]
    imp["user_id"] = imp["user_id"].astype("Int32")
    imp.loc[imp.index[1:3], "user_id"] = pd.NA  # two null ids
    imp.to_parquet(bad / "impressions.parquet", index=False)
    items = pd.read_parquet(bad / "items.parquet")
    items["topic"] = items["topic"].astype(str)  # mistyped
    items.to_parquet(bad / "items.parquet", index=False)
    days = pd.read_parquet(bad / "user_days.parquet")
    late = days.tail(4).assign(day=np.int16(9))  # rows dated after the last logged day
    pd.concat([days, late]).to_parquet(bad / "user_days.parquet", index=False)
    return bad


def test_check_names_table_and_column_of_each_defect(world, tmp_path):
    bad = _broken_copy(world, tmp_path)
    result = cli("data", "check", str(bad), "--json")
    assert result.returncode == 2, result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] is False and report["exit_code"] == 2
    problems = report["problems"]
    expected = ["impressions.watch_seconds: missing (declared float)",
                "impressions.user_id: 2 row(s) with a null id",
                "impressions.click: 1 label(s) outside [0, 1] (found 0 to 3)",
                "impressions.day: 1 day(s) with no rows between day 0 and day 3: day 2",
                "items.topic: declared int, found string",
                "user_days.day: 4 row(s) dated after day 3 (the last day of impressions): future days would leak"]
    for start in expected:
        assert any(p.startswith(start) for p in problems), (start, problems)
    assert len(problems) == len(expected) and all("\n" not in p for p in problems)
    text = cli("data", "check", str(bad))
    assert text.returncode == 2 and text.stdout == ""
    assert text.stderr.count("\n") == len(expected) + 1 and "error: " in text.stderr and "Traceback" not in text.stderr


def test_as_of_marks_later_interactions_as_leakage(world):
    early = WORLD.model_copy(update={"as_of": 1})
    problems = [str(p) for p in check_source(early, open_source(str(world))).problems]
    assert any(p.startswith("impressions.day:") and "after day 1 (as_of)" in p for p in problems)
    assert any(p.startswith("user_days.day:") for p in problems)


def test_training_refuses_a_source_that_fails_the_check(world, tmp_path):
    bad = _broken_copy(world, tmp_path)
    with pytest.raises(ConfigError, match="impressions.watch_seconds: missing"):
        load_dataset(bad, ModelConfig())
    (bad / "impressions.parquet").write_bytes(b"")  # unreadable, not a traceback
    with pytest.raises(SourceError, match="impressions"):
        read_source(bad)


def test_movielens_as_published_passes_its_declaration_with_its_two_empty_days():
    from cambrian.trainer.movielens import movielens_files

    folder = str(movielens_files()["data"].parent)
    assert check_source(MOVIELENS_100K, open_source(folder)).ok
    strict = MOVIELENS_100K.model_copy(update={"max_empty_days": 0})
    problems = [str(p) for p in check_source(strict, open_source(folder)).problems]
    assert problems == ["ratings.timestamp: 2 day(s) with no rows between 1997-09-20 and 1998-04-22: "
                        "1997-12-11, 1997-12-16"]


def test_a_duckdb_warehouse_is_a_source(world, tmp_path):
    import duckdb

    db = tmp_path / "wh.duckdb"
    con = duckdb.connect(str(db))
    for name in TABLES:
        con.execute(f"CREATE TABLE {name} AS SELECT * FROM read_parquet('{world / (name + '.parquet')}')")
    con.close()
    _same_dataset(load_dataset(f"duckdb://{db}", ModelConfig()), load_dataset(world, ModelConfig()))


# --- cambrian data fetch --------------------------------------------------------------------------------------

def test_fetch_refuses_a_failing_source_and_leaves_nothing_behind(world, tmp_path):
    from cambrian.trainer.fetch import fetch

    bad = _broken_copy(world, tmp_path)
    with pytest.raises(ConfigError, match="fails the data check .*impressions.watch_seconds: missing"):
        fetch(str(bad), tmp_path / "snapshot")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad"]  # no snapshot, no .partial folder


def test_fetch_keeps_a_complete_snapshot_and_replaces_an_incomplete_one(world, tmp_path):
    from cambrian.trainer.fetch import fetch

    out = tmp_path / "snapshot"
    out.mkdir()
    (out / "impressions.parquet").write_bytes(b"half a file")  # a killed earlier attempt (no world.json)
    meta = fetch(str(world), out)
    assert meta["rows"]["impressions"] == len(pd.read_parquet(world / "impressions.parquet"))
    _same_dataset(load_dataset(out, ModelConfig()), load_dataset(world, ModelConfig()))
    # complete: a second fetch reads nothing (a source that is gone by now changes nothing)
    assert fetch(str(tmp_path / "gone"), out) == meta


def test_two_fetches_of_the_same_rows_are_the_same_data_for_the_run_store_and_changed_rows_are_not(world, tmp_path):
    """Each Evolution fetches its own snapshot folder: the run store (trainer/runstore.py) must still see the same
    rows as the same data, or a second Evolution on an unchanged source trains its baseline's noise-floor seeds
    again. Before, a snapshot was keyed by its files' modification times, new in every fetch."""
    import os

    from cambrian.trainer.fetch import fetch
    from cambrian.trainer.runstore import data_fingerprint

    first, second = fetch(str(world), tmp_path / "source-a"), fetch(str(world), tmp_path / "source-b")
    os.utime(tmp_path / "source-b" / "impressions.parquet", ns=(1, 1))  # written at another time
    assert first["content_sha256"] == second["content_sha256"]
    assert data_fingerprint(tmp_path / "source-a") == data_fingerprint(tmp_path / "source-b")
    assert data_fingerprint(tmp_path / "source-a", content=True) == data_fingerprint(tmp_path / "source-b", content=True)

    changed = tmp_path / "changed"
    shutil.copytree(world, changed)
    frame = pd.read_parquet(changed / "impressions.parquet")
    frame.loc[0, "watch_seconds"] += 1.0
    frame.to_parquet(changed / "impressions.parquet", index=False)
    fetch(str(changed), tmp_path / "source-c")
    assert data_fingerprint(tmp_path / "source-c") != data_fingerprint(tmp_path / "source-a")


# Runs `fetch` in a process of its own, held after it copied the source (before its check and its rename) until
# the test lets it go: that orders two fetches the way two training pods can interleave.
HELD_FETCH = """
import json, pathlib, sys, time
import cambrian.trainer.fetch as F
uri, out, gate = sys.argv[1], sys.argv[2], pathlib.Path(sys.argv[3])
check = F.require_valid
def held(*args, **kw):
    (gate / "copied").touch()
    while not (gate / "go").exists():
        time.sleep(0.02)
    return check(*args, **kw)
F.require_valid = held
print(json.dumps(F.fetch(uri, out)))
"""


def test_two_fetches_at_once_into_one_snapshot_leave_one_complete_snapshot_that_both_read(world, tmp_path):
    """Two training Jobs of one Evolution fetch into its one snapshot at the same time, and the warehouse lands a
    new day between their reads: the first to finish places its copy, the other keeps it (never replaces a
    snapshot that may already be read) and returns it, so both train on the same rows; no partial copy is left."""
    import time

    import duckdb

    db = tmp_path / "wh.duckdb"
    con = duckdb.connect(str(db))
    for name in TABLES:
        con.execute(f"CREATE TABLE {name} AS SELECT * FROM read_parquet('{world / (name + '.parquet')}')")
    last = con.execute("SELECT max(day) FROM impressions").fetchone()[0]
    con.close()
    snapshots = tmp_path / "claim" / "data"
    out = snapshots / "source-evo"

    def start(name: str) -> tuple[subprocess.Popen, object]:
        gate = tmp_path / name
        gate.mkdir()
        proc = subprocess.Popen([sys.executable, "-c", HELD_FETCH, f"duckdb://{db}", str(out), str(gate)],
                                cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while not (gate / "copied").exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.02)
        return proc, gate

    def finish(proc: subprocess.Popen, gate) -> dict:
        (gate / "go").touch()
        stdout, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 0, stderr
        return json.loads(stdout)

    early = start("early")  # the baseline's Job: copied the warehouse as it was
    con = duckdb.connect(str(db))  # a new day lands
    con.execute(f"INSERT INTO impressions SELECT * REPLACE (day + 1 AS day, impression_id + 10000000 AS impression_id) "
                f"FROM impressions WHERE day = {last}")
    con.execute(f"INSERT INTO user_days SELECT * REPLACE (day + 1 AS day) FROM user_days WHERE day = {last}")
    con.close()
    late = start("late")  # a candidate's Job: copied it with the new day
    placed = finish(*late)  # the later copy finishes first and is the snapshot
    kept = finish(*early)  # the earlier one must not replace it: it returns the snapshot in place
    assert kept == placed and placed["days"] == last + 2  # one more day than the world's (days 0..last+1)
    assert sorted(p.name for p in snapshots.iterdir()) == ["source-evo"]  # no partial copy left behind
    days = pq.read_table(out / "impressions.parquet", columns=["day"])["day"].to_pylist()
    assert max(days) == last + 1 and len(days) == placed["rows"]["impressions"]


# --- PostgreSQL ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def postgres(world):
    if dataservers.postgres_bin() is None:
        pytest.skip("initdb not found: apt-get install postgresql (scripts/setup.sh does)")
    import ibis

    with dataservers.postgres_server() as pg:
        con = ibis.postgres.connect(host="127.0.0.1", port=pg.port, user=pg.user, password=pg.password,
                                    database=pg.database)
        for name in TABLES:
            con.create_table(name, pd.read_parquet(world / f"{name}.parquet"))
        con.create_table("impressions_late", pd.read_parquet(world / "impressions.parquet").assign(day=7))
        from cambrian.trainer.movielens import movielens_files

        for name, path in zip(("ratings", "movies", "users_ml"), movielens_files().values()):
            columns = list(MOVIELENS_100K.tables["users" if name == "users_ml" else name].columns)
            con.create_table(name, pd.read_parquet(path, columns=columns))
        con.disconnect()
        yield pg


def test_postgres_source_trains_the_same_as_the_files(postgres, world, monkeypatch):
    monkeypatch.setenv("PGPASSWORD", postgres.password)
    _same_dataset(load_dataset(postgres.url(), ModelConfig()), load_dataset(world, ModelConfig()))
    result = cli("data", "check", postgres.url(), "--json", env={"PGPASSWORD": postgres.password})
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads(result.stdout)["tables"]["impressions"]["rows"] == len(pd.read_parquet(world / "impressions.parquet"))


def test_movielens_from_postgres_trains_the_same_as_its_folder(postgres, tmp_path, monkeypatch):
    monkeypatch.setenv("PGPASSWORD", postgres.password)
    declared = MOVIELENS_100K.model_dump(mode="json", exclude_defaults=True)
    declared["tables"]["users"]["sql"] = "users_ml"  # the world's users table is there too
    (tmp_path / "ml.yaml").write_text(json.dumps(declared))
    config = ModelConfig.model_validate({"training": {"validation_days": 14}})
    _same_rows(load_dataset(postgres.url(), config, schema=str(tmp_path / "ml.yaml")), _movielens_from_its_folder())
    # a snapshot of it carries its declaration (not built in: copied beside the tables)
    result = cli("data", "fetch", postgres.url(), "--schema", str(tmp_path / "ml.yaml"), "--out", str(tmp_path / "snap"),
                 env={"PGPASSWORD": postgres.password})
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "snap" / "world.json").read_text())["declaration"] == "declaration.yaml"
    snap = load_dataset(tmp_path / "snap", config)
    _same_rows(snap, _movielens_from_its_folder())
    assert [p.name for p in snap.schema.proxies] == ["auc", "rating_corr"]


def test_postgres_fetch_is_a_checked_snapshot_that_never_records_the_password(postgres, world, tmp_path):
    result = cli("data", "fetch", postgres.url(), "--out", str(tmp_path / "snap"), "--batch-rows", "500",
                 env={"PGPASSWORD": postgres.password})
    assert result.returncode == 0, result.stdout + result.stderr
    _same_dataset(load_dataset(tmp_path / "snap", ModelConfig()), load_dataset(world, ModelConfig()))
    meta = json.loads((tmp_path / "snap" / "world.json").read_text())
    assert meta["n_users"] == len(pd.read_parquet(world / "users.parquet")) and meta["days"] == 4
    with_password = dataservers.Postgres(postgres.port, postgres.user, postgres.password).url(password=True)
    again = cli("data", "fetch", with_password, "--out", str(tmp_path / "other"))
    assert again.returncode == 0, again.stderr
    written = "".join(p.read_text(errors="replace") for p in (tmp_path / "other").iterdir() if p.suffix == ".json")
    assert postgres.password not in written + again.stdout + again.stderr


def test_postgres_check_reports_a_table_of_the_declaration_read_elsewhere(postgres, tmp_path):
    mine = WORLD.model_dump()
    mine["tables"]["user_days"]["sql"] = "impressions_late"  # wrong table: wrong columns and future days
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(mine))
    result = cli("data", "check", postgres.url(), "--schema", str(path), env={"PGPASSWORD": postgres.password})
    assert result.returncode == 2
    assert "user_days.active: missing (declared int)" in result.stderr


def test_postgres_password_is_never_printed(postgres):
    wrong = dataservers.Postgres(postgres.port, postgres.user, "not-the-password").url(password=True)
    result = cli("data", "check", wrong, "--json")
    assert result.returncode == 2
    error = json.loads(result.stdout)["error"]
    assert "password authentication failed" in error and "not-the-password" not in result.stdout + result.stderr
    assert redact(wrong) in error


# --- S3 (moto's server) -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def s3(world):
    if dataservers.moto_server() is None:
        pytest.skip("moto_server not found: scripts/setup.sh installs it")
    from cambrian.trainer.movielens import movielens_files

    with dataservers.moto_s3() as server:
        server.upload({**{f"world/{name}.parquet": world / f"{name}.parquet" for name in TABLES},
                       **{f"movielens/{path.name}": path for path in movielens_files().values()}})
        yield server


def test_s3_source_trains_the_same_as_the_files(s3, world, monkeypatch):
    for k, v in s3.env.items():
        monkeypatch.setenv(k, v)
    _same_dataset(load_dataset("s3://lake/world", ModelConfig()), load_dataset(world, ModelConfig()))
    result = cli("data", "check", "s3://lake/world", "--batch-rows", "1000", env=s3.env)
    assert result.returncode == 0 and "passes the world declaration" in result.stdout


def _movielens_from_its_folder():
    from cambrian.trainer.movielens import wheel_folder

    return load_dataset(wheel_folder(), ModelConfig.model_validate({"training": {"validation_days": 14}}),
                        schema=MOVIELENS_100K)


def test_movielens_from_s3_trains_through_its_declaration_and_reports_its_own_proxies(s3, tmp_path, monkeypatch):
    for k, v in s3.env.items():
        monkeypatch.setenv(k, v)
    config = ModelConfig.model_validate({"training": {"validation_days": 14}})
    direct = load_dataset("s3://lake/movielens", config, schema="movielens-100k")
    _same_dataset(direct, _movielens_from_its_folder())
    assert list(direct.val.signals.columns) == ["auc", "rating_corr", "label", "__user"]
    (tmp_path / "cfg.yaml").write_text("training: {epochs: 1, validation_days: 14}\n")
    result = cli("train", "--data", "s3://lake/movielens", "--schema", "movielens-100k", "--config",
                 str(tmp_path / "cfg.yaml"), "--out", str(tmp_path / "run"), "--json", env=s3.env)
    assert result.returncode == 0, result.stderr
    metrics = json.loads(result.stdout)
    assert metrics["proxies"] == ["auc", "rating_corr"] and metrics["auc"] > 0.6 and metrics["rating_corr"] > 0.1
    assert metrics["n_val"] == len(direct.val)


def test_s3_fetch_without_credentials_fails_in_one_line(s3, tmp_path):
    env = {k: v for k, v in s3.env.items() if k != "AWS_SECRET_ACCESS_KEY"} | {"AWS_SECRET_ACCESS_KEY": "wrong"}
    ok = cli("data", "fetch", "s3://lake/world", "--out", str(tmp_path / "snap"), env=s3.env)
    assert ok.returncode == 0 and (tmp_path / "snap" / "world.json").is_file(), ok.stderr
    gone = cli("data", "fetch", "s3://lake/nothing", "--out", str(tmp_path / "none"), env=env)
    assert gone.returncode == 2 and "Traceback" not in gone.stderr and not (tmp_path / "none").exists()


def test_s3_errors_are_one_line_and_never_print_the_secret(s3):
    env = {**s3.env, "AWS_SECRET_ACCESS_KEY": "wrong-secret-value"}
    result = cli("data", "check", "s3://lake/nothing-here", env=env)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "impressions: impressions.parquet not found in s3://lake/nothing-here" in result.stderr
    assert "wrong-secret-value" not in result.stdout + result.stderr
    gone = cli("data", "check", "s3://lake/world", env={**s3.env, "AWS_ENDPOINT_URL": "http://127.0.0.1:1"})
    assert gone.returncode == 2 and "impressions: cannot read impressions.parquet in s3://lake/world" in gone.stderr


@pytest.mark.slow  # a whole training run (torch, the sandbox): ~40 s on a busy machine
def test_cambrian_train_reads_its_data_from_s3(s3, world, tmp_path):
    config = tmp_path / "quick.yaml"
    config.write_text("training:\n  epochs: 1\n")
    result = cli("train", "--data", "s3://lake/world", "--out", str(tmp_path / "run"), "--config", str(config),
                 "--json", env=s3.env)
    assert result.returncode == 0, result.stdout + result.stderr
    metrics = json.loads(result.stdout)
    assert metrics["n_train"] + metrics["n_val"] == len(pd.read_parquet(world / "impressions.parquet"))
    assert (tmp_path / "run" / "bundle").is_dir()


def test_a_folder_of_part_files_is_one_table(world, tmp_path):
    folder = tmp_path / "parts"
    shutil.copytree(world, folder)
    imp = pd.read_parquet(folder / "impressions.parquet")
    (folder / "impressions.parquet").unlink()
    (folder / "impressions.parquet").mkdir()
    half = len(imp) // 2
    imp.iloc[:half].to_parquet(folder / "impressions.parquet" / "part-0.parquet", index=False)
    # a second writer chose wider integers: the reader brings every part to one schema
    imp.iloc[half:].astype({"user_id": "int64"}).to_parquet(folder / "impressions.parquet" / "part-1.parquet", index=False)
    (folder / "impressions.parquet" / "_SUCCESS").write_text("")
    read = read_source(folder)[1]["impressions"]
    assert len(read) == len(imp) and read["user_id"].tolist() == imp["user_id"].tolist()


def test_the_readme_example_declaration_is_valid(tmp_path):
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme[readme.index("## Bring your own data"):]
    path = tmp_path / "shop.yaml"
    path.write_text(re.search(r"```yaml\n(.*?)```", section, re.S).group(1))
    shop = load_schema(path)
    assert shop.as_of == 41 and shop.tables["items"].sql == "catalog.items"


def test_redact_masks_passwords_in_the_authority_and_the_query():
    assert redact("postgresql://me:s3cret@db:5432/prod?sslmode=require&password=again") == \
        "postgresql://me:***@db:5432/prod?sslmode=require&password=***"
    assert redact("s3://lake/world") == "s3://lake/world"


# --- an Evolution on its own source (local driver, real trainer) ----------------------------------------------

def _evolve_on(source: str, root, monkeypatch, env: dict) -> dict:
    """The tiny scenario with `spec.data.source`, 2 baseline seeds + 1 candidate, no rollout review."""
    import yaml
    from pathlib import Path

    from cambrian.operator.local_driver import LocalDriver
    from cambrian.operator.localstore import LocalStore, load_manifests

    for k, v in env.items():
        monkeypatch.setenv(k, v)
    (evo,) = load_manifests(Path(__file__).parents[1] / "local" / "tiny-evolution.yaml")
    evo["spec"]["data"] = {"source": {"uri": source, "secretRef": {"name": "warehouse"}}}
    evo["spec"]["agent"]["budgets"]["evaluations"] = 3
    evo["spec"]["cadence"]["online"] = "3650d"  # the offline loop only: a snapshot has no users to serve
    driver = LocalDriver(root, poll_s=0.2, max_days=2)
    driver.apply([evo])
    driver.run()  # until the budget is spent and the simulated time limit passes (no review is due)
    phases = sorted(h["status"]["phase"] for h in LocalStore(root).list("hypotheses"))
    assert phases[0] == "Scored" and set(phases) <= {"Scored", "Validated"}, phases  # the budget trains one candidate
    status = LocalStore(root).list("evolutions")[0]["status"]
    snapshots = list((root / "data").iterdir())
    assert [p.name.startswith("source-") for p in snapshots] == [True]  # one checked snapshot for every run
    meta = yaml.safe_load((snapshots[0] / "world.json").read_text())
    assert "password" not in json.dumps(meta).lower()
    return status


@pytest.mark.slow  # three real training runs (~1-2 min)
def test_an_evolution_trains_on_its_own_postgres_tables(postgres, world, tmp_path, monkeypatch):
    status = _evolve_on(postgres.url(), tmp_path / "run", monkeypatch, {"PGPASSWORD": postgres.password})
    assert len(status["baselineRuns"]) == 2 and status["spend"]["evaluations"] == 3
    impressions = len(pd.read_parquet(world / "impressions.parquet"))
    assert all(0 < r["metrics"]["n_train"] + r["metrics"]["n_val"] <= impressions for r in status["baselineRuns"])


@pytest.mark.slow
def test_an_evolution_trains_on_its_own_parquet_in_a_bucket(s3, tmp_path, monkeypatch):
    status = _evolve_on("s3://lake/world", tmp_path / "run", monkeypatch, s3.env)
    assert len(status["baselineRuns"]) == 2 and status["spend"]["evaluations"] == 3


def test_the_local_platform_fetches_a_source_through_the_evolutions_own_declaration(world, tmp_path):
    """spec.data.customDeclaration locally: one snapshot per (Evolution, source, declaration), which carries the
    declaration for every run that trains on it (its own proxy included)."""
    from cambrian.operator.localstore import LocalStore
    from cambrian.operator.platform.local import LocalPlatform
    from cambrian.operator.reconcile.common import data_snapshot
    from cambrian.trainer.data import source_schema

    mine = WORLD.model_dump(mode="json", exclude_none=True, exclude_defaults=True)
    mine = {**mine, "name": "shop", "proxies": [*mine["proxies"], {"name": "watch_corr", "signal": "impressions.watch_seconds"}]}
    platform = LocalPlatform(tmp_path / "run", LocalStore(tmp_path / "run"), lambda: None)
    data_own, data_plain = {"source": {"uri": str(world)}, "customDeclaration": mine}, {"source": {"uri": str(world)}}
    own = platform.data_for(data_own, data_snapshot("uid-evo", data_own))
    plain = platform.data_for(data_plain, data_snapshot("uid-evo", data_plain))
    assert own != plain and own.parent == plain.parent  # one snapshot per declaration of the same source
    declared = source_schema(str(own))
    assert declared.name == "shop" and [p.name for p in declared.proxies][-1] == "watch_corr"
    assert source_schema(str(plain)) == WORLD
    assert platform.data_for(data_own, data_snapshot("uid-evo", data_own)) == own  # kept, not fetched again
