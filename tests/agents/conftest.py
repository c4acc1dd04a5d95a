"""Fixtures for the offline-agent tests: a tiny world data directory (the CONTRACTS.md layout), a
scripted stand-in trainer for sandbox tests, and a loopback server that replays recorded Gemini
responses to the real google-genai client."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cambrian.testing.gemini import GeminiReplay

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "gemini"


def write_tiny_world(out: Path, n_users: int = 150, n_items: int = 80, n_topics: int = 4, days: int = 4,
                     per_user_day: int = 12, seed: int = 7) -> Path:
    """A small world with real structure: clicks follow topic match, returns follow satisfying watches.

    Used only when `cambrian world generate` is not wanted (speed); it follows the data contract.
    """
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    item_topic = rng.integers(0, n_topics, n_items)
    quality = rng.beta(2, 2, n_items)
    bait = rng.beta(1.5, 4, n_items)
    length = rng.gamma(3, 2.0, n_items).astype(np.float32) + 0.5
    home = rng.integers(0, n_topics, n_users)
    rows = []
    udays = []
    imp_id = 0
    for day in range(days):
        for u in range(n_users):
            items = rng.integers(0, n_items, per_user_day)
            match = (item_topic[items] == home[u]).astype(float)
            p_click = 1 / (1 + np.exp(-(-1.2 + 1.5 * match + 2.0 * bait[items] + 0.5 * quality[items])))
            click = rng.random(per_user_day) < p_click
            completion = np.where(click, np.clip(quality[items] * (0.6 + 0.6 * match) - 0.5 * bait[items]
                                                 + rng.normal(0, 0.1, per_user_day), 0, 1), 0)
            watch = completion * length[items] * 60
            like = click & (rng.random(per_user_day) < completion * 0.5)
            hate = click & (rng.random(per_user_day) < bait[items] * 0.3)
            satisfaction = float((completion * click).sum() - hate.sum())
            returned = int(rng.random() < 1 / (1 + np.exp(-(0.3 + 0.6 * satisfaction))))
            for k in range(per_user_day):
                rows.append((imp_id, day, u, 0, k, k % 6, int(items[k]), int(click[k]), float(watch[k]),
                             float(completion[k]), int(not click[k]), int(like[k]), int(hate[k])))
                imp_id += 1
            udays.append((day, u, 1, 1, per_user_day, int(click.sum()), float(watch.sum() / 60), returned))
    imp = pd.DataFrame(rows, columns=["impression_id", "day", "user_id", "session", "step", "position", "item_id",
                                      "click", "watch_seconds", "completion", "skip", "like", "hate"])
    imp = imp.astype({"impression_id": "int64", "day": "int16", "user_id": "int32", "session": "int16", "step": "int16",
                      "position": "int8", "item_id": "int32", "click": "int8", "watch_seconds": "float32",
                      "completion": "float32", "skip": "int8", "like": "int8", "hate": "int8"})
    imp.to_parquet(out / "impressions.parquet")
    pd.DataFrame(udays, columns=["day", "user_id", "active", "sessions", "impressions", "clicks", "minutes",
                                 "returned_next_day"]).astype(
        {"day": "int16", "user_id": "int32", "active": "int8", "sessions": "int16", "impressions": "int32",
         "clicks": "int32", "minutes": "float32", "returned_next_day": "int8"}).to_parquet(out / "user_days.parquet")
    pd.DataFrame({"item_id": np.arange(n_items, dtype=np.int32), "topic": item_topic.astype(np.int16),
                  "length_min": length, "thumb_intensity": (bait + rng.normal(0, 0.05, n_items)).astype(np.float32)}
                 ).to_parquet(out / "items.parquet")
    pd.DataFrame({"user_id": np.arange(n_users, dtype=np.int32), "home_topic": home.astype(np.int16)}).to_parquet(
        out / "users.parquet")
    (out / "world.json").write_text(json.dumps({
        "schema_version": 1, "seed": seed, "n_users": n_users, "n_items": n_items, "n_topics": n_topics,
        "days": days, "params": {}, "logging_policy": "random"}))
    return out


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory) -> Path:
    return write_tiny_world(tmp_path_factory.mktemp("world") / "data")


# A stand-in for `cambrian train` (same CLI and output contract) whose behaviour a test scripts through
# the delta: used to test the sandbox and the loop's bookkeeping without paying for torch training.
FAKE_TRAINER = r'''
import json, os, sys, time, math
args = sys.argv[1:]
opt = {args[i]: args[i + 1] for i in range(0, len(args) - 1, 2) if args[i].startswith("--")}
out = opt["--out"]; os.makedirs(out, exist_ok=True)
cfg = json.load(open(opt["--config"]))
delta = json.load(open(opt["--delta"])) if "--delta" in opt else None
env_dump = os.environ.get("FAKE_DUMP_ENV")
if env_dump:
    json.dump({"env": dict(os.environ), "cwd": os.getcwd()}, open(os.path.join(out, "env.json"), "w"))
if os.environ.get("FAKE_SLOW"):
    time.sleep(float(os.environ["FAKE_SLOW"]))
# a candidate's behaviour: `--mode M` before the trainer's arguments (every candidate), else its delta's params.mode
mode = (opt.get("--mode") or ((delta or {}).get("patch") or {}).get("params", {}).get("mode")) if delta else None
if mode == "hang":
    while True:
        pass
if mode == "sleep":
    time.sleep(3600)
if mode == "bomb":
    hog = []
    while True:
        hog.append(bytearray(50 * 1024 * 1024))
        for i in range(0, len(hog[-1]), 4096):
            hog[-1][i] = 1
if mode == "gate":
    json.dump({"stage": "static", "reason": "import of 'os' is not allowed"}, open(os.path.join(out, "error.json"), "w"))
    sys.exit(3)
if mode == "crash":
    raise RuntimeError("boom")
if delta and delta.get("code"):  # like the trainer's gate: the plugin's top level runs in this process
    import types
    exec(compile(delta["code"], "<plugin>", "exec"), {"nn": types.SimpleNamespace(Module=object), "math": math})
seed = cfg["training"]["seed"]
lr = (delta or {}).get("patch", {}).get("lr", cfg["optimizer"]["lr"]) if delta and delta["component"] == "optimizer" else cfg["optimizer"]["lr"]
noise = ((seed * 7919) % 13 - 6) * 1e-4
val_loss = 0.5 + 0.05 * abs(math.log10(lr) - math.log10(0.01)) + noise
label = cfg["reward"]["label"] if not (delta and delta["component"] == "reward") else delta["patch"].get("label", "")
ret = 0.10 + (0.05 if "returned_next_day" in label else 0.0) + noise
m = {"schema_version": 1, "config_fingerprint": "x", "val_loss": val_loss, "auc": 0.7, "long_watch_corr": ret,
     "return_corr": 0.2, "like_corr": 0.1, "top_watch_share": 0.07, "train_seconds": 0.01, "examples_per_second": 1.0,
     "n_train": 1, "n_val": 1, "device": "cpu"}
json.dump(m, open(os.path.join(out, "metrics.json"), "w"))
'''


@pytest.fixture(scope="session")
def fake_trainer(tmp_path_factory) -> list[str]:
    path = tmp_path_factory.mktemp("fake") / "fake_train.py"
    path.write_text(FAKE_TRAINER)
    return [sys.executable, str(path)]


def load_fixture(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text())


@pytest.fixture
def gemini_replay():
    servers = []

    def start(names_or_bodies):
        bodies = [load_fixture(n) if isinstance(n, str) else n for n in names_or_bodies]
        s = GeminiReplay(bodies)
        servers.append(s)
        return s

    yield start
    for s in servers:
        s.close()
