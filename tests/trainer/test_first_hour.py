"""Issue 20, the trainer's messages: what a new user sees through the real `cambrian` process (exit code, stderr,
metrics.json) when the data is capped, a delta field is misplaced, a plugin reads a missing batch key, clipping
never acts, or a proxy metric cannot say anything on the data."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

CAMBRIAN = str(Path(sys.executable).with_name("cambrian"))  # the installed console script of this venv


def cambrian(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([CAMBRIAN, *args], capture_output=True, text=True, timeout=600)


def write_yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tiny") / "data"
    proc = cambrian("world", "generate", "--users", "60", "--days", "3", "--easy", "--seed", "5", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    return out


def train(world: Path, out: Path, training: dict) -> tuple[subprocess.CompletedProcess, dict]:
    config = write_yaml(out.parent / f"{out.name}.yaml", {"training": {"epochs": 1, **training}})
    proc = cambrian("train", "--data", str(world), "--out", str(out), "--config", str(config))
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    return proc, json.loads((out / "metrics.json").read_text())


def test_the_cap_and_an_idle_clip_are_said_on_stderr_and_kept_in_metrics(tiny_world, tmp_path):
    proc, metrics = train(tiny_world, tmp_path / "capped", {"max_train_examples": 1000, "grad_clip": 1e6})
    available = metrics["n_train_available"]
    assert metrics["n_train"] == 1000 < available
    capped = f"capped at 1000 of {available} examples (training.max_train_examples)"
    assert f"warning: {capped}" in proc.stderr
    clip = [w for w in metrics["warnings"] if "grad_clip" in w]
    assert len(clip) == 1 and "never triggered" in clip[0] and clip[0] in proc.stderr
    assert metrics["grad_clip_steps_clipped"] == 0 and 0 < metrics["max_grad_norm"] < 1e6
    assert any(capped in w for w in metrics["warnings"])


def test_an_uncapped_run_whose_clip_acts_warns_of_nothing(tiny_world, tmp_path):
    proc, metrics = train(tiny_world, tmp_path / "plain", {"grad_clip": 1e-4})
    assert metrics["n_train"] == metrics["n_train_available"]
    assert metrics["grad_clip_steps_clipped"] > 0
    assert metrics["warnings"] == [] and "warning:" not in proc.stderr
    assert "uninformative_metrics" not in metrics  # the simulated world observes a next day and real watch times


def test_proxies_that_carry_no_information_on_the_data_are_named_with_the_reason(tiny_world, tmp_path):
    """A world shaped like MovieLens-100k: no next day after the last one, and a watch time derived from clicks."""
    world = tmp_path / "movielens-like"
    shutil.copytree(tiny_world, world)
    days = pd.read_parquet(world / "user_days.parquet")
    days.loc[days["day"] == days["day"].max(), "returned_next_day"] = 0
    days.to_parquet(world / "user_days.parquet", index=False)
    imp = pd.read_parquet(world / "impressions.parquet")
    imp["watch_seconds"] = (imp["click"] * 90.0).astype(imp["watch_seconds"].dtype)
    imp.to_parquet(world / "impressions.parquet", index=False)

    proc, metrics = train(world, tmp_path / "run", {})
    assert set(metrics["uninformative_metrics"]) == {"return_corr", "long_watch_corr"}
    assert metrics["return_corr"] == 0
    for name in ("return_corr", "long_watch_corr"):
        assert f"warning: {name} is uninformative on this data set because" in proc.stderr
    # read from the data through the declaration: a constant signal, and a signal equal to the label (click)
    assert "user_days.returned_next_day, 0)) is 0 for every held-out row" in metrics["uninformative_metrics"]["return_corr"]
    assert "equals the label on every held-out row" in metrics["uninformative_metrics"]["long_watch_corr"]


def test_a_misplaced_delta_field_names_its_owner_in_one_line(tiny_world, tmp_path):
    delta = write_yaml(tmp_path / "delta.yaml", {"component": "optimizer", "patch": {"grad_clip": 1.0}})
    proc = cambrian("train", "--data", str(tiny_world), "--out", str(tmp_path / "run"), "--delta", str(delta))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "patch.grad_clip" in lines[0] and "grad_clip belongs to component training" in lines[0]
    assert "Extra inputs" not in proc.stderr

    unknown = write_yaml(tmp_path / "unknown.yaml", {"component": "optimizer", "patch": {"momentum": 0.9}})
    proc = cambrian("gate", "--data", str(tiny_world), "--delta", str(unknown))
    assert proc.returncode == 2
    assert "patch.momentum" in proc.stderr and "lr, name, params, weight_decay" in proc.stderr


def test_a_plugin_reading_a_missing_batch_key_is_told_the_keys_it_has(tiny_world, tmp_path):
    code = ("class Model(nn.Module):\n"
            "    def __init__(self, spec, cfg):\n"
            "        super().__init__()\n"
            "        self.item = nn.Embedding(spec.n_items, 1)\n"
            "    def forward(self, batch):\n"
            "        return self.item(batch['item_id']).squeeze(-1)\n")
    delta = write_yaml(tmp_path / "arch.yaml", {"component": "architecture", "code": code})
    proc = cambrian("gate", "--data", str(tiny_world), "--delta", str(delta))
    assert proc.returncode == 3
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "forward_backward" in lines[0] and "batch['item_id']" in lines[0]
    # the world's declared features, by name
    assert "the batch keys are user, item, topic, home_topic, length_min, thumb_intensity, dense" in lines[0]
