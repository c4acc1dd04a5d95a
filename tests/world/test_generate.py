"""The world data directory (docs/CONTRACTS.md) and the `cambrian world` command."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from cambrian.errors import ConfigError
from cambrian.world.generate import generate
from cambrian.world.policies import random_policy
from cambrian.world.sim import World

USERS, DAYS = 300, 4

CONTRACT = {
    "items.parquet": {"item_id": "int32", "topic": "int16", "length_min": "float32", "thumb_intensity": "float32"},
    "users.parquet": {"user_id": "int32", "home_topic": "int16"},
    "impressions.parquet": {
        "impression_id": "int64", "day": "int16", "user_id": "int32", "session": "int16", "step": "int16",
        "position": "int8", "item_id": "int32", "click": "int8", "watch_seconds": "float32",
        "completion": "float32", "skip": "int8", "like": "int8", "hate": "int8"},
    "user_days.parquet": {
        "day": "int16", "user_id": "int32", "active": "int8", "sessions": "int16", "impressions": "int32",
        "clicks": "int32", "minutes": "float32", "returned_next_day": "int8"},
}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("world") / "data"
    generate(out, n_users=USERS, days=DAYS, seed=3)
    return out


def test_files_columns_and_dtypes_follow_the_contract(data_dir):
    for name, dtypes in CONTRACT.items():
        df = pd.read_parquet(data_dir / name)
        assert df.dtypes.astype(str).to_dict() == dtypes, name
    meta = json.loads((data_dir / "world.json").read_text())
    assert meta["schema_version"] == 1 and meta["seed"] == 3 and meta["n_users"] == USERS
    assert meta["n_items"] == 500 and meta["n_topics"] == 8 and meta["days"] == DAYS
    assert meta["logging_policy"] == "random" and meta["params"]["slate"] == 6
    items_truth = pd.read_parquet(data_dir / "truth" / "items_truth.parquet")
    assert {"item_id", "quality", "bait"} <= set(items_truth.columns)
    user_truth = pd.read_parquet(data_dir / "truth" / "user_truth.parquet")
    assert len(user_truth) == USERS * DAYS and {"day", "user_id", "satisfaction_end"} <= set(user_truth.columns)


def test_contents_are_consistent(data_dir):
    items = pd.read_parquet(data_dir / "items.parquet")
    users = pd.read_parquet(data_dir / "users.parquet")
    im = pd.read_parquet(data_dir / "impressions.parquet")
    ud = pd.read_parquet(data_dir / "user_days.parquet")
    assert (items["item_id"] == np.arange(500)).all() and (users["user_id"] == np.arange(USERS)).all()
    assert (im["impression_id"].to_numpy() == np.arange(len(im))).all()
    assert im["item_id"].between(0, 499).all() and set(im["day"]) == set(range(DAYS))
    assert len(ud) == USERS * DAYS
    # returned_next_day is matured on every logged day, including the last one
    wide = ud.pivot(index="user_id", columns="day", values="active")
    ret = ud.pivot(index="user_id", columns="day", values="returned_next_day")
    for d in range(DAYS - 1):
        assert (ret[d] == wide[d + 1]).all()
    assert ret[DAYS - 1].isin([0, 1]).all()
    assert ret[DAYS - 1].mean() > 0.3


def test_same_seed_gives_byte_identical_files(tmp_path, data_dir):
    again = tmp_path / "again"
    generate(again, n_users=USERS, days=DAYS, seed=3)
    for name in [*CONTRACT, "truth/items_truth.parquet", "truth/user_truth.parquet", "world.json"]:
        assert (again / name).read_bytes() == (data_dir / name).read_bytes(), name
    other = tmp_path / "other"
    generate(other, n_users=USERS, days=DAYS, seed=4)
    assert (other / "impressions.parquet").read_bytes() != (data_dir / "impressions.parquet").read_bytes()


def test_load_of_a_data_dir_resumes_after_the_logged_days(data_dir):
    world = World.load(data_dir)
    assert world.seed == 3 and world.n_users == USERS and world.day == DAYS
    items = pd.read_parquet(data_dir / "items.parquet")
    assert np.allclose(world.catalogue.length, items["length_min"], rtol=1e-6)
    assert np.allclose(world.catalogue.thumb, items["thumb_intensity"], rtol=1e-5, atol=1e-6)
    ud = pd.read_parquet(data_dir / "user_days.parquet")
    log = world.run_day(random_policy)
    assert (log.user_days["day"] == DAYS).all()
    last = ud[ud["day"] == DAYS - 1]["returned_next_day"].to_numpy()
    assert (log.user_days["active"].to_numpy() == last).all()
    n_logged = pq.ParquetFile(data_dir / "impressions.parquet").metadata.num_rows
    assert log.impressions["impression_id"].min() == n_logged


def test_generate_refuses_to_overwrite(tmp_path):
    out = tmp_path / "d"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not empty"):
        generate(out, n_users=20, days=1)
    generate(out, n_users=20, days=1, force=True)
    assert (out / "notes.txt").read_text() == "mine", "--force replaces only generate's own files"


def test_other_logging_policies_and_small_catalogues(tmp_path):
    s = generate(tmp_path / "a", n_users=50, days=2, policy="satisfaction_aware:1.0", n_items=40)
    assert s["logging_policy"] == "satisfaction_aware:1.0"
    assert pd.read_parquet(tmp_path / "a" / "items.parquet").shape[0] == 40
    with pytest.raises(ConfigError, match="unknown policy"):
        generate(tmp_path / "b", n_users=5, days=1, policy="best")


# ------------------------------------------------------------------------------------------ CLI
CAMBRIAN = str(Path(sys.executable).with_name("cambrian"))


def _cli(*args: str):
    """The real `cambrian world` process: its errors are printed by cambrian.cli.main, as a user sees them."""
    r = subprocess.run([CAMBRIAN, "world", *args], capture_output=True, text=True, timeout=300)
    return SimpleNamespace(exit_code=r.returncode, stdout=r.stdout, output=r.stdout + r.stderr)


def test_cli_generate_and_summary(tmp_path):
    out = tmp_path / "w"
    r = _cli("generate", "--users", "80", "--days", "3", "--seed", "5", "--out", str(out), "--json")
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert summary["overall"]["users"] == 80 and summary["overall"]["days"] == 3
    assert len(summary["per_day"]) == 3
    r = _cli("summary", str(out), "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["overall"]["ctr"] == summary["overall"]["ctr"]
    r = _cli("summary", str(out))
    assert r.exit_code == 0 and "completion" in r.stdout and "return" in r.stdout
    r = _cli("generate", "--users", "80", "--days", "3", "--out", str(out))
    assert r.exit_code == 2 and "not empty" in r.output and "--force" in r.output
    r = _cli("generate", "--users", "80", "--days", "1", "--out", str(out), "--force")
    assert r.exit_code == 0, r.output
    assert "CTR" in r.stdout


@pytest.mark.parametrize("args, needle", [
    (["--users", "0"], "--users"),
    (["--days", "0"], "--days"),
    (["--users", "ten"], "--users"),
    (["--policy", "best"], "unknown policy"),
    (["--set", "eta_s=-1"], "eta_s"),
    (["--set", "bogus=1"], "bogus"),
    (["--set", "eta_s"], "NAME=VALUE"),
    (["--set", "n_candidates=600"], "n_candidates"),
])
def test_cli_bad_arguments_give_clear_errors(tmp_path, args, needle):
    r = _cli("generate", "--out", str(tmp_path / "x"), "--users", "5", "--days", "1", *args)
    assert r.exit_code == 2, r.output
    assert needle in r.output
    assert not (tmp_path / "x" / "world.json").exists()


def test_cli_summary_of_a_missing_dir(tmp_path):
    r = _cli("summary", str(tmp_path))
    assert r.exit_code == 2 and "world.json" in r.output


def test_cli_compare_runs_the_oracle_policies():
    r = _cli("compare", "--users", "60", "--days", "3", "--policies", "random,satisfaction_aware:1", "--json")
    assert r.exit_code == 0, r.output
    rows = json.loads(r.stdout)
    assert [row["policy"] for row in rows] == ["random", "satisfaction_aware:1"]
    assert all(0 < row["ctr"] < 1 and 0 <= row["dau_late"] <= 1 for row in rows)
    r = _cli("compare", "--users", "10", "--days", "1", "--policies", "nope")
    assert r.exit_code == 2 and "unknown policy" in r.output
