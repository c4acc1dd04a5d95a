"""Benchmark `streaming`: training from a 10-million-row Parquet source in streaming batches against loading its
training rows whole (issue 17), with the peak memory of each.

A world-shaped source (impressions, users, items, user days; 10 M impressions over 30 days, 300 k with --quick)
is generated into a temporary folder. The trusted step (`write_training_input`: the data check, one streaming
pass writing the training rows as Parquet row groups, the held-out day in memory) runs once in its own
process. Then the contained trainer (`python -m cambrian.trainer.contained train`, uncontained, one torch
thread) trains the same model on the same rows twice, each in a fresh process, its peak resident set read with
wait4 (ru_maxrss):
- whole: training.shuffle_row_groups above the file's row-group count, so the rows are loaded whole and every
  epoch is one permutation of all of them (the trainer before streaming);
- streamed: the default training.shuffle_row_groups (32 row groups of 65,536 rows; 2 with --quick), so the
  rows stream and each epoch shuffles within that buffer;
- small (full size only): a buffer of 4 row groups, to show that the peak follows the buffer.
Same model, batch size, epochs, seed and input files; only the reader differs. Examples/s = training rows x
epochs / the trainer's own fit seconds (as metrics.json): the streamed reader's reads fall inside them, the
whole load's before them (in the trainer's wall time), which favours the whole load.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from cambrian.bench.throughput import load_now
from cambrian.trainer.config import ModelConfig

DAYS = 30
USERS, ITEMS, TOPICS = 20_000, 5_000, 20
SMALL = 4  # a third mode's buffer (row groups): memory follows the buffer, not the source

_PREPARE = r"""
import json, sys, time
from pathlib import Path
from cambrian.trainer.config import ModelConfig
from cambrian.trainer.train import write_training_input
config = ModelConfig.model_validate_json(Path(sys.argv[3]).read_text())
t0 = time.perf_counter()
data = write_training_input(Path(sys.argv[2]), config, sys.argv[1])
print(json.dumps({"seconds": time.perf_counter() - t0, "n_train": len(data.train), "n_val": len(data.val)}))
"""


def write_world(folder: Path, rows: int, seed: int = 0, group: int = 1_000_000) -> None:
    """A world-shaped source: clicks depend on whether the item's topic is the user's home topic, so the model
    has something to learn. Written a million rows at a time (the generator holds one chunk)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    home = rng.integers(0, TOPICS, USERS)
    topic = rng.integers(0, TOPICS, ITEMS)
    pq.write_table(pa.table({"user_id": np.arange(USERS), "home_topic": home}), folder / "users.parquet")
    pq.write_table(pa.table({"item_id": np.arange(ITEMS), "topic": topic,
                             "length_min": rng.gamma(2.0, 0.6, ITEMS), "thumb_intensity": rng.random(ITEMS)}),
                   folder / "items.parquet")
    d, u = np.meshgrid(np.arange(DAYS), np.arange(USERS), indexing="ij")
    n = d.size
    pq.write_table(pa.table({"day": d.ravel(), "user_id": u.ravel(), "active": np.ones(n, np.int64),
                             "sessions": np.ones(n, np.int64), "impressions": np.zeros(n, np.int64),
                             "clicks": np.zeros(n, np.int64), "minutes": np.zeros(n),
                             "returned_next_day": (rng.random(n) < 0.7).astype(np.int64)}),
                   folder / "user_days.parquet")
    writer = None
    for start in range(0, rows, group):
        m = min(group, rows - start)
        ids = np.arange(start, start + m, dtype=np.int64)
        user = rng.integers(0, USERS, m)
        item = rng.integers(0, ITEMS, m)
        click = (rng.random(m) < np.where(home[user] == topic[item], 0.35, 0.08)).astype(np.int64)
        completion = click * rng.random(m)
        table = pa.table({"impression_id": ids, "day": ids * DAYS // rows, "user_id": user,
                          "session": np.zeros(m, np.int64), "step": np.zeros(m, np.int64),
                          "position": rng.integers(0, 6, m), "item_id": item, "click": click,
                          "watch_seconds": completion * 300, "completion": completion,
                          "skip": np.zeros(m, np.int64), "like": (rng.random(m) < 0.02).astype(np.int64),
                          "hate": np.zeros(m, np.int64)})
        if writer is None:
            writer = pq.ParquetWriter(folder / "impressions.parquet", table.schema, compression="zstd")
        writer.write_table(table)
    writer.close()
    (folder / "world.json").write_text(json.dumps({"generator": "bench/streaming.py", "rows": rows}))


def _child(argv: list[str], env: dict | None = None) -> tuple[str, float, float]:
    """Run a process; its stdout, wall seconds and peak resident set (MiB, ru_maxrss of that process alone)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    out, err = proc.stdout.read(), proc.stderr.read()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise RuntimeError(f"{argv[:4]} failed ({proc.returncode}): {err[-2000:]}")
    return out, wall, usage.ru_maxrss / 1024  # Linux: KiB


def _commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).parent, timeout=10)
        return out.stdout.strip() or None
    except OSError:
        return None


def run(quick: bool = False) -> dict:
    rows = 300_000 if quick else 10_000_000
    config = ModelConfig()
    config.training.epochs = 2 if quick else 1
    config.training.max_train_examples = None
    buffer = 2 if quick else config.training.shuffle_row_groups
    load_start = load_now()
    commit = _commit()  # the code that runs: taken before, as a commit during the run would not be it
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with tempfile.TemporaryDirectory(prefix="cambrian-bench-streaming-") as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        write_world(root / "world", rows)
        generated = time.perf_counter() - t0
        (root / "config.json").write_text(config.model_dump_json())
        out, wall, peak = _child([sys.executable, "-c", _PREPARE, str(root / "world"), str(root / "in"),
                                  str(root / "config.json")], env)
        prepared = json.loads(out.strip().splitlines()[-1])
        import pyarrow.parquet as pq

        groups = pq.ParquetFile(root / "in" / "train.parquet").metadata.num_row_groups
        # the resident set of the trainer's imports alone: what neither mode can go below
        _, _, imports = _child([sys.executable, "-c", "import torch, pyarrow.parquet, pandas, cambrian.trainer.train, "
                                "cambrian.trainer.rows, cambrian.trainer.contained"], env)
        # alternated (whole, streamed, small, streamed, whole) so that a change of the shared machine's load
        # falls on both modes alike; each mode's figures are the mean of its runs
        buffers = {"whole": groups + 1, "streamed": buffer, "small": SMALL}
        order = ["whole", "streamed"] if quick else ["whole", "streamed", "small", "streamed", "whole"]
        runs: dict[str, list[dict]] = {}
        for i, mode in enumerate(order):
            cfg = config.model_copy(deep=True)
            cfg.training.shuffle_row_groups = buffers[mode]
            (root / "in" / "config.json").write_text(cfg.model_dump_json())
            scratch = root / f"out-{i}"
            scratch.mkdir()
            _, twall, tpeak = _child([sys.executable, "-m", "cambrian.trainer.contained", "train", str(root / "in"),
                                      str(scratch)], env)
            result = json.loads((scratch / "result.json").read_text())
            n = prepared["n_train"] * cfg.training.epochs
            runs.setdefault(mode, []).append({"peak_rss_mib": round(tpeak, 1), "fit_seconds": round(result["train_seconds"], 2),
                                              "examples_per_second": round(n / result["train_seconds"], 1),
                                              "wall_seconds": round(twall, 2), "load_1min": round(os.getloadavg()[0], 2)})
        modes = {mode: {"shuffle_row_groups": buffers[mode], "runs": r,
                        "examples_per_second": round(float(np.mean([x["examples_per_second"] for x in r])), 1),
                        "peak_rss_mib": max(x["peak_rss_mib"] for x in r)} for mode, r in runs.items()}
    whole, streamed = modes["whole"], modes["streamed"]
    return {
        "name": "streaming",
        "quick": quick,
        "command": "cambrian bench run streaming" + (" --quick" if quick else ""),
        "ratio": round(streamed["examples_per_second"] / whole["examples_per_second"], 3),
        "ratio_meaning": "training examples/s reading the rows in streaming batches / loading them whole "
                         "(same model, batch, epochs, seed and files)",
        "memory_ratio": round(streamed["peak_rss_mib"] / whole["peak_rss_mib"], 3),
        "memory_ratio_meaning": "the trainer process's peak RSS streamed / whole (imports included)",
        "memory_ratio_above_imports": round((streamed["peak_rss_mib"] - imports) / max(whole["peak_rss_mib"] - imports, 1), 3),
        "imports_rss_mib": round(imports, 1),
        "modes": modes,
        "prepare": {"peak_rss_mib": round(peak, 1), "wall_seconds": round(wall, 2), **prepared,
                    "note": "the trusted step, the same for both modes: data check + one streaming pass"},
        "source": {"impressions": rows, "days": DAYS, "users": USERS, "items": ITEMS, "row_groups": groups,
                   "generate_seconds": round(generated, 1)},
        "model": {"architecture": config.architecture.name, "batch_size": config.training.batch_size,
                  "epochs": config.training.epochs, "cpu_threads": config.training.cpu_threads},
        "commit": commit,
        "machine": {"cpus": os.cpu_count(), "load_average_start": load_start,
                    "load_average_end": load_now()},
    }


