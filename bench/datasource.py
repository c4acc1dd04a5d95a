"""Reading a large Parquet source in streaming batches against loading it whole (issue 17).

A synthetic impressions table of the world's declared columns (10 M rows; 1 M with --quick) is written in
1 M-row groups. Each mode runs in its own process, its resident set sampled every 2 ms while it reads (peak above the
resident set after imports):
- whole: `read_tables` (what the trainer does today: every declared column in memory at once);
- streaming: the same columns through `Source.batches` (65,536 rows at a time), folded into running sums;
- check: `cambrian data check`'s pass (`check_source`) over the same source.
Headline ratio: the whole load's peak memory over the streaming pass's. Training from streamed batches is
bench/streaming.py's.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

_CHILD = r"""
import json, sys, threading, time
import psutil
mode, folder = sys.argv[1], sys.argv[2]
from cambrian.trainer.schema import WORLD
from cambrian.trainer.sources import open_source, read_tables
from cambrian.trainer.datacheck import check_source
schema = WORLD.model_copy(update={"tables": {"impressions": WORLD.tables["impressions"]}})
source = open_source(folder)
process, peak, done = psutil.Process(), [0], threading.Event()
def sample():  # the import peak is transient: sample the resident set while the mode runs
    while not done.is_set():
        peak[0] = max(peak[0], process.memory_info().rss)
        time.sleep(0.002)
base = process.memory_info().rss
sampler = threading.Thread(target=sample, daemon=True)
sampler.start()
start = time.perf_counter()
if mode == "whole":
    table = read_tables(schema, source)["impressions"]
    rows, clicks = table.num_rows, int(table.column("click").to_numpy().sum())
elif mode == "streaming":
    rows = clicks = 0
    for batch in source.batches("impressions", schema.tables["impressions"], list(schema.tables["impressions"].columns)):
        rows += batch.num_rows
        clicks += int(batch.column("click").to_numpy().sum())
else:
    report = check_source(schema, source)
    rows, clicks = report.tables["impressions"].rows, None
seconds = time.perf_counter() - start
done.set()
sampler.join()
print(json.dumps({"rows": rows, "clicks": clicks, "seconds": seconds, "peak_mib": peak[0] / 2**20,
                  "above_imports_mib": (peak[0] - base) / 2**20}))
"""


def write_source(folder: Path, rows: int, group: int = 1_000_000, seed: int = 0) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    writer = None
    days = 30
    for start in range(0, rows, group):
        n = min(group, rows - start)
        ids = np.arange(start, start + n, dtype=np.int64)
        click = (rng.random(n) < 0.15).astype(np.int8)
        completion = (click * rng.random(n)).astype(np.float32)
        table = pa.table({
            "impression_id": ids, "day": (ids * days // rows).astype(np.int16),
            "user_id": rng.integers(0, 100_000, n, dtype=np.int32), "session": np.zeros(n, np.int16),
            "step": rng.integers(0, 50, n).astype(np.int16), "position": rng.integers(0, 6, n).astype(np.int8),
            "item_id": rng.integers(0, 50_000, n, dtype=np.int32), "click": click,
            "watch_seconds": completion * 300, "completion": completion,
            "skip": (click * (completion < 0.2)).astype(np.int8), "like": (rng.random(n) < 0.02).astype(np.int8),
            "hate": (rng.random(n) < 0.01).astype(np.int8),
        })
        if writer is None:
            writer = pq.ParquetWriter(folder / "impressions.parquet", table.schema, compression="zstd")
        writer.write_table(table)
    writer.close()


def _measure(mode: str, folder: Path) -> dict:
    out = subprocess.run([sys.executable, "-c", _CHILD, mode, str(folder)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def run(quick: bool = False) -> dict:
    rows = 1_000_000 if quick else 10_000_000
    with tempfile.TemporaryDirectory(prefix="cambrian-bench-source-") as tmp:
        folder = Path(tmp)
        t0 = time.perf_counter()
        write_source(folder, rows)
        written = time.perf_counter() - t0
        size_mib = (folder / "impressions.parquet").stat().st_size / 2**20
        modes = {mode: _measure(mode, folder) for mode in ("whole", "streaming", "check")}
    assert modes["whole"]["rows"] == modes["streaming"]["rows"] == modes["check"]["rows"] == rows
    assert modes["whole"]["clicks"] == modes["streaming"]["clicks"]
    for m in modes.values():
        m["rows_per_s"] = m["rows"] / m["seconds"]
    return {
        "name": "datasource",
        "ratio": modes["whole"]["above_imports_mib"] / max(modes["streaming"]["above_imports_mib"], 1.0),
        "ratio_meaning": "peak memory above imports of loading the source whole / of reading it in streaming batches",
        "command": "cambrian bench run datasource" + (" --quick" if quick else ""),
        "rows": rows, "parquet_mib": size_mib, "write_seconds": written, "modes": modes,
        "not_measured": "training throughput from streamed batches: `cambrian bench run streaming`",
    }
