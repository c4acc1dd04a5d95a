"""Benchmark `throughput`: hypotheses evaluated per hour by the real offline loop on 2 cores, and the
share of wall time that is not training.

One `run_evolution` with the built-in proposer (2 workers: one candidate per core, each trainer on one
torch thread) on a freshly generated world (the default world of `cambrian world generate` in the full
run). Nothing is estimated: the numbers come from the journal the loop wrote.
* every `evaluation` record carries the wall seconds of one sandboxed `cambrian train` subprocess;
* every finished run of a hypothesis carries the trainer's own `train_seconds` (the optimisation loop,
  `trainer.train.fit`), in the hypothesis' `meta.runs`.
With W the loop's wall time and k = 2 slots, the k·W slot-seconds split into
  fit (training proper)  +  trainer-process overhead (start-up, data loading and reward SQL, gate,
  validation scoring, bundle export)  +  loop overhead (proposing, journal, idle slots at barriers).
Headline ratio = non-training share = 1 − Σfit / (k·W)  (target < 10%).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

CORES = 2


def load_now() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


@contextmanager
def pinned(cores: int = CORES) -> Iterator[list[int]]:
    """Restrict this process (and the trainers it starts) to `cores` CPUs, restoring the mask after."""
    try:
        before = sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux: run unpinned
        yield []
        return
    chosen = before[:cores]
    os.sched_setaffinity(0, chosen)
    try:
        yield chosen
    finally:
        os.sched_setaffinity(0, before)


def make_world(out: Path, users: int | None = None, days: int | None = None, seed: int = 0) -> tuple[Path, dict]:
    """A world data directory (the default size when users/days are None) and its summary. The `easy`
    preset, as the figures in bench/README.md were measured (the calibrated world's smaller online
    effects belong to the fidelity and decision benchmarks)."""
    from cambrian.world.generate import generate

    kwargs: dict[str, Any] = {"seed": seed, "preset": "easy"}
    if users is not None:
        kwargs["n_users"] = users
    if days is not None:
        kwargs["days"] = days
    summary = generate(out, force=True, **kwargs)
    return out, summary


def journal_events(run_dir: Path) -> list[dict]:
    from cambrian.agents.journal import JOURNAL_FILE

    return [json.loads(line) for line in (Path(run_dir) / JOURNAL_FILE).read_text().splitlines() if line.strip()]


def timing_breakdown(events: list[dict], wall_seconds: float, slots: int) -> dict[str, Any]:
    """Pure: the split of slots·wall into fit, trainer-process overhead and loop overhead, from journal events."""
    if wall_seconds <= 0 or slots < 1:
        raise ValueError("wall_seconds must be > 0 and slots >= 1")
    evals = [e for e in events if e.get("type") == "evaluation"]
    hyps: dict[str, dict] = {}
    for e in events:  # replay hypothesis records and updates to get each one's final meta.runs
        if e.get("type") == "hypothesis":
            hyps[e["id"]] = dict(e["data"])
        elif e.get("type") == "update" and e["id"] in hyps:
            hyps[e["id"]].update(e["fields"])
    subprocess_s = sum(float(e.get("train_seconds", 0.0)) for e in evals)
    fit_s = 0.0
    for e in evals:
        run = ((hyps.get(e["id"], {}).get("meta") or {}).get("runs") or {}).get(str(e["seed"]))
        if e.get("ok") and run and isinstance(run.get("train_seconds"), (int, float)):
            fit_s += float(run["train_seconds"])
    slot_s = slots * wall_seconds
    evaluated = {e["id"] for e in evals}
    return {
        "evaluations": len(evals),
        "evaluations_ok": sum(1 for e in evals if e.get("ok")),
        "hypotheses_evaluated": len(evaluated - {"baseline"}),
        "baseline_evaluations": sum(1 for e in evals if e["id"] == "baseline"),
        "slot_seconds": slot_s,
        "fit_seconds": fit_s,
        "trainer_process_seconds": subprocess_s,
        "share_fit": fit_s / slot_s,
        "share_trainer_overhead": max(subprocess_s - fit_s, 0.0) / slot_s,
        "share_loop_overhead": max(slot_s - subprocess_s, 0.0) / slot_s,
        "non_training_share": 1.0 - fit_s / slot_s,
    }


def run(quick: bool = False) -> dict:
    from cambrian.agents.evolve import run_evolution
    from cambrian.agents.settings import EvolveConfig

    t0 = time.perf_counter()
    load_start = load_now()
    with tempfile.TemporaryDirectory(prefix="cambrian-bench-throughput-") as tmp, pinned(CORES) as cpus:
        tmp_path = Path(tmp)
        users, days = (200, 3) if quick else (None, None)  # full: the default world
        g0 = time.perf_counter()
        data, summary = make_world(tmp_path / "world", users, days)
        world_seconds = time.perf_counter() - g0
        max_evals = 4 if quick else 12
        cfg = EvolveConfig(
            data_dir=data, run_dir=tmp_path / "run", generations=1 if quick else 2, workers=CORES,
            provider={"kind": "builtin"}, budgets={"max_evaluations": max_evals},
            noise={"baseline_seeds": 2, "confirm_top": 1, "confirm_seeds": 1},
            limits={"threads": 1, "wall_seconds": 1800},
        )
        started = time.perf_counter()
        result = run_evolution(cfg)
        wall = time.perf_counter() - started
        events = journal_events(cfg.run_dir)
    b = timing_breakdown(events, wall, CORES)
    load_end = load_now()
    return {
        "name": "throughput",
        "command": "cambrian bench run throughput" + (" --quick" if quick else ""),
        "quick": quick,
        "ratio": round(b["non_training_share"], 4),
        "ratio_meaning": ("share of the offline loop's slot time (2 workers x wall) not spent in the trainer's "
                          "optimisation loop, from the journal's evaluation records (target < 0.10)"),
        "hypotheses_per_hour": round(b["hypotheses_evaluated"] / wall * 3600, 2),
        "evaluations_per_hour": round(b["evaluations"] / wall * 3600, 2),
        "loop_wall_seconds": round(wall, 2),
        "breakdown": {k: (round(v, 4) if isinstance(v, float) else v) for k, v in b.items()},
        "stop_reason": result.stop_reason,
        "evaluation_budget": max_evals,
        "world": {**{k: summary["overall"][k] for k in ("users", "days", "impressions")},
                  "generate_seconds": round(world_seconds, 2)},
        "cores": {"workers": CORES, "pinned_cpus": cpus, "machine_cpus": os.cpu_count()},
        "load_average_start": load_start,
        "load_average_end": load_end,
        "targets_met": {"non_training_share<0.10": b["non_training_share"] < 0.10},
        "seconds": round(time.perf_counter() - t0, 2),
    }


if __name__ == "__main__":  # pragma: no cover
    print(json.dumps(run(quick=True), indent=2))
