"""Benchmark `training`: the trainer's examples per second against plain PyTorch loops.

Every loop trains the same baseline model (same init, batch size, optimizer, loss) on the same examples of a
freshly generated world, in the same process. The trainer is timed on the path a contained run takes: its
rows written as Parquet by the trusted side and streamed back (trainer/rows.py: ids, labels and weights per
window, features looked up in the catalogue on the device); `trainer_in_memory` is the same `fit` on the
rows held whole in memory, `trainer_unfused` the same `fit` with Φ's optimizer told `fused: false` (so
`fused_step_gain` is the share of torch's fused optimizer step, the trainer's default). Four plain loops: the
textbook TensorDataset + DataLoader(shuffle=True) + BCE; the strongest plain loop, whole batches gathered with
index_select from feature tensors already on the device; the same with the fused Adam step (the baseline gets
the trainer's advantage); and the gather loop under torch.compile. The trainer's three and the two eager
gather loops run twice each, in the order A B C D E, the DataLoader loop, E D C B A, and each figure is its
two runs pooled: on the 2-core machine the same loop's two runs differed by up to 60% (the later one slower,
with or without torch.compile between them), so a loop timed once and later than another lost to it by drift
alone (the headline before 4 Dec 2026, 0.75, timed the trainer once, last). The compiled loop runs last:
whatever torch.compile leaves in the process cannot touch the eager figures. Ratio = trainer / the strongest
plain loop (> 1 is faster); each loop's own ratio is reported too. On CUDA the result also carries the bytes
moved per example and the ratio of the achieved rate to the device's memory-bandwidth bound.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch

from cambrian.trainer.config import ModelConfig
from cambrian.trainer.contained import read_input
from cambrian.trainer.data import load_dataset
from cambrian.trainer.models import build_model
from cambrian.trainer.fit import fit, pick_device
from cambrian.trainer.train import write_training_input


def _reference_loop(config: ModelConfig, data, device: torch.device) -> float:
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(config.training.seed)
    model = build_model(data.spec, config.architecture).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.optimizer.lr)
    f = data.train.features
    names = list(f)
    tensors = [torch.from_numpy(f[k]) for k in names]
    dataset = TensorDataset(*tensors, torch.from_numpy(data.train.label))
    loader = DataLoader(dataset, batch_size=config.training.batch_size, shuffle=True)
    started = time.perf_counter()
    for _ in range(config.training.epochs):
        model.train()
        for *columns, label in loader:
            batch = {k: c.to(device) for k, c in zip(names, columns)}
            loss = torch.nn.functional.binary_cross_entropy_with_logits(model(batch), label.to(device))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started


def _gather_loop(config: ModelConfig, data, device: torch.device, compiled: bool,
                 fused: bool = False) -> tuple[float, float]:
    """The strongest plain loop: every feature one tensor on the device (pinned first on CPU), a fresh
    permutation per epoch and whole batches gathered with index_select; optionally the model under
    torch.compile, or torch's fused Adam step (the trainer's default). Returns (seconds, seconds of the first
    step), the first step holding the compilation."""
    torch.manual_seed(config.training.seed)
    model = build_model(data.spec, config.architecture).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.optimizer.lr, **({"fused": True} if fused else {}))
    step_model = torch.compile(model) if compiled else model
    f = data.train.features
    tensors = {k: torch.from_numpy(f[k]).to(device) for k in f}
    label = torch.from_numpy(data.train.label).to(device)
    n, bs = len(label), config.training.batch_size
    first = None
    started = time.perf_counter()
    for _ in range(config.training.epochs):
        model.train()
        perm = torch.randperm(n, device=device)
        for lo in range(0, n, bs):
            idx = perm[lo:lo + bs]
            batch = {k: t.index_select(0, idx) for k, t in tensors.items()}
            loss = torch.nn.functional.binary_cross_entropy_with_logits(step_model(batch), label.index_select(0, idx))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if first is None:
                first = time.perf_counter() - started
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started, first or 0.0


def _warm_up(config: ModelConfig, data, device: torch.device) -> None:
    """A few untimed steps first: whichever loop ran first paid the device's one-off start (on an H200 the first
    of two identical gather runs measured 239 k examples/s, the second 363 k)."""
    config = config.model_copy(deep=True)
    config.training.epochs = 1
    _gather_loop(config, SimpleNamespace(spec=data.spec, train=data.train.head(20 * config.training.batch_size)), device,
                 compiled=False)


def run(quick: bool = False) -> dict:
    users, days = (400, 4) if quick else (2000, 14)
    with tempfile.TemporaryDirectory() as tmp:
        world = Path(tmp) / "world"
        subprocess.run([sys.executable, "-m", "cambrian.cli", "world", "generate", "--easy", "--users", str(users), "--days",
                        str(days), "--seed", "0", "--out", str(world)], check=True, capture_output=True)
        config = ModelConfig()
        config.training.epochs = 1 if quick else 2
        data = load_dataset(world, config)
        # what a contained run reads: the trusted side's Parquet rows and catalogue (trainer/contained.py)
        write_training_input(Path(tmp) / "input", config, world)
        streamed_config, streamed = read_input(Path(tmp) / "input")
        if len(streamed.train) != len(data.train):
            raise RuntimeError(f"the written rows ({len(streamed.train)}) are not the loaded ones ({len(data.train)})")
        return _measure(config, data, streamed_config, streamed, quick)


def _measure(config: ModelConfig, data, streamed_config: ModelConfig, streamed, quick: bool) -> dict:
    device = pick_device("auto")
    if device.type == "cpu" and config.training.cpu_threads:
        torch.set_num_threads(config.training.cpu_threads)
    n = len(data.train) * config.training.epochs
    unfused = streamed_config.model_copy(deep=True)
    unfused.optimizer.params = {**unfused.optimizer.params, "fused": False}
    # each timed twice, in the order A B C ... (the DataLoader loop) ... C B A, and pooled
    contestants = {
        "gather": lambda: _gather_loop(config, data, device, compiled=False)[0],
        "gather_fused": lambda: _gather_loop(config, data, device, compiled=False, fused=True)[0],
        "trainer": lambda: fit(streamed_config, streamed, device)[1],
        "trainer_in_memory": lambda: fit(config, data, device)[1],
        "trainer_unfused": lambda: fit(unfused, streamed, device)[1],
    }
    runs: dict[str, list[float]] = {name: [] for name in contestants}
    _warm_up(config, data, device)
    for name in contestants:
        runs[name].append(contestants[name]())
    reference_seconds = _reference_loop(config, data, device)
    for name in reversed(contestants):
        runs[name].append(contestants[name]())
    # last, so that nothing torch.compile leaves in the process (hooks, threads, caches) touches the eager loops
    try:
        compiled_seconds, compile_first = _gather_loop(config, data, device, compiled=True)
        compiled_error = None
    except Exception as exc:  # noqa: BLE001 - no C++ compiler or an unsupported op: said in the result
        compiled_seconds, compile_first, compiled_error = None, None, f"{type(exc).__name__}: {str(exc)[:300]}"
    # each pooled figure: the examples of both runs over their summed seconds
    pooled = {name: sum(seconds) / len(seconds) for name, seconds in runs.items()}
    trainer_seconds, memory_seconds = pooled["trainer"], pooled["trainer_in_memory"]
    gather_seconds = pooled["gather"]
    baselines = {"dataloader": reference_seconds, "gather": gather_seconds, "gather_fused": pooled["gather_fused"]}
    if compiled_seconds is not None:
        baselines["gather_compiled"] = compiled_seconds
    strongest = min(baselines, key=baselines.get)
    result = {
        "name": "training",
        "command": "cambrian bench run training" + (" --quick" if quick else ""),
        "quick": quick,
        "device": str(torch.cuda.get_device_name(0) if device.type == "cuda" else f"cpu x{torch.get_num_threads()} threads"),
        "examples": n,
        "runs_pooled": {**{name: len(seconds) for name, seconds in runs.items()}, "gather_compiled": 1, "dataloader": 1},
        "trainer_examples_per_second": round(n / trainer_seconds, 1),
        "trainer_in_memory_examples_per_second": round(n / memory_seconds, 1),
        # the fused optimizer step's share of the trainer's speed: the same fit with Φ's optimizer unfused
        "trainer_unfused_examples_per_second": round(n / pooled["trainer_unfused"], 1),
        "fused_step_gain": round(pooled["trainer_unfused"] / trainer_seconds, 3),
        "runs_examples_per_second": {name: [round(n / s, 1) for s in seconds] for name, seconds in runs.items()},
        "reference_examples_per_second": round(n / reference_seconds, 1),
        "baseline_examples_per_second": {k: round(n / v, 1) for k, v in baselines.items()},
        "ratios": {k: round(v / trainer_seconds, 3) for k, v in baselines.items()},
        "strongest_baseline": strongest,
        "ratio": round(baselines[strongest] / trainer_seconds, 3),
        "ratio_meaning": "trainer examples/s (its rows streamed from Parquet as in a contained run) divided by "
                         "the strongest plain loop's (>1: trainer faster); `ratios` "
                         "has each loop: dataloader = TensorDataset + DataLoader(shuffle=True); gather = whole-batch "
                         "index_select from tensors on the device; gather_fused = the same with torch's fused Adam step "
                         "(the trainer's default); gather_compiled = the same under torch.compile "
                         "(its time includes compiling: compile_first_step_seconds)",
        "compile_first_step_seconds": None if compile_first is None else round(compile_first, 2),
        # past the first step (compilation, allocator warm-up): what a long run converges to
        "steady_examples_per_second": {
            k: round((n - config.training.batch_size) / (secs - first), 1)
            for k, secs, first in (("gather_compiled", compiled_seconds, compile_first),)
            if secs is not None and secs > first},
        "compiled_error": compiled_error,
    }
    if device.type == "cuda":
        # Bound: each example's input bytes must be read at least once; bandwidth measured by a copy.
        bytes_per_example = sum(v.itemsize * (v.size // len(data.train)) for v in data.train.features.values()) + 8
        bandwidth = _copy_bandwidth(device)
        result["bytes_per_example_read"] = bytes_per_example
        result["measured_copy_bandwidth_gb_s"] = round(bandwidth / 1e9, 1)
        result["fraction_of_bandwidth_bound"] = round(n / trainer_seconds * bytes_per_example / bandwidth, 6)
    return result


def _copy_bandwidth(device: torch.device) -> float:
    x = torch.empty(1 << 28, dtype=torch.float32, device=device)
    x.clone()
    torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(5):
        x.clone()
    torch.cuda.synchronize()
    return 5 * 2 * x.nbytes / (time.perf_counter() - started)
