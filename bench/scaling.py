"""Benchmark `scaling`: data-parallel training (trainer/distributed.py) with 1 and 2 workers on this machine.

Each run is the real `cambrian train` path: the sandbox, torchrun's agent and DDP with gloo on CPU (NCCL
when the workers each have a GPU), the same world, configuration and effective batch. Examples per second
are the training examples of all epochs over rank 0's fit time (data loading, process start-up and scoring
excluded, as in metrics.json). Scaling efficiency = examples/s with N workers / (N × examples/s with 1);
1.0 is linear. The machine's CPU count and load average are recorded with the figures: on a shared
machine, other work competes with the workers and the efficiency says as much about it as about DDP.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from cambrian.trainer.config import ModelConfig
from cambrian.trainer.distributed import Distribution
from cambrian.trainer.train import train


def run(quick: bool = False, counts: tuple[int, ...] = (1, 2)) -> dict:
    users, days = (400, 4) if quick else (2000, 14)
    config = ModelConfig()
    config.training.epochs = 1 if quick else 2
    load_before = os.getloadavg()
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        world = Path(tmp) / "world"
        subprocess.run([sys.executable, "-m", "cambrian.cli", "world", "generate", "--easy", "--users", str(users),
                        "--days", str(days), "--seed", "0", "--out", str(world)], check=True, capture_output=True)
        for n in counts:
            m = train(config, world, Path(tmp) / f"w{n}", dist=Distribution(workers=n))
            runs[n] = {"examples_per_second": m["examples_per_second"], "train_seconds": m["train_seconds"],
                       "val_loss": round(m["val_loss"], 5), "auc": round(m["auc"], 5), "device": m["device"],
                       "sandbox": m["sandbox"]}
    base = runs[counts[0]]["examples_per_second"]
    efficiency = {n: round(r["examples_per_second"] / (n * base), 3) for n, r in runs.items()}
    top = counts[-1]
    return {
        "name": "scaling",
        "quick": quick,
        "command": "cambrian bench run scaling" + (" --quick" if quick else ""),
        "workers": {str(n): r for n, r in runs.items()},
        "scaling_efficiency": {str(n): e for n, e in efficiency.items()},
        "ratio": efficiency[top],
        "ratio_meaning": f"examples/s with {top} workers / ({top} x examples/s with 1): 1.0 is linear scaling",
        "machine": {"cpus": os.cpu_count(), "load_average_before": [round(x, 2) for x in load_before],
                    "load_average_after": [round(x, 2) for x in os.getloadavg()],
                    "note": "shared machine: other processes compete for the CPUs during the runs"},
        "batch_size": config.training.batch_size, "epochs": config.training.epochs,
        "cpu_threads_per_worker": config.training.cpu_threads,
    }
