"""Benchmark `throughput`: hypotheses evaluated per hour by the real offline loop on 2 cores, and the
share of wall time that is not training.

One Evolution with the built-in proposer, reconciled by the operator's core on the LocalDriver (2 workers:
one candidate per core, each trainer on one torch thread; cambrian.bench.evolution), on a freshly generated
world (the default world of `cambrian world generate` in the full run). Nothing is estimated: the numbers
come from the loop's training runs.
* each run's wall seconds are the platform's record of one sandboxed `cambrian train` subprocess (started,
  finished);
* each finished run carries the trainer's own `train_seconds` (the optimisation loop, `trainer.fit.fit`)
  among the metrics its owner's status keeps (a Hypothesis's `seedRuns`, the Evolution's `baselineRuns`).
With W the loop's wall time and k = 2 slots, the k·W slot-seconds split into
  fit (training proper)  +  trainer-process overhead (start-up, data loading and reward SQL, gate,
  validation scoring, bundle export)  +  loop overhead (proposing, journal, idle slots at barriers).
Headline ratio = non-training share = 1 − Σfit_cpu / (k·W)  (target < 10%), of the warm arm (the local
platform's default), where fit_cpu is the contained trainer's own CPU seconds in the optimisation loop: its
wall time also counts the CPU that other processes (a warm worker's spare sandboxes importing torch, the other
slot's start-up) took from its core, so a wall-clock share would book their work as training. The wall-clock
share is reported beside it (`non_training_share_wall`); the cold arm (warm trainers off), warm without the
prepared-rows cache and warm with bubblewrap spares instead of the zygote run in the same benchmark on the same
world, interleaved (each arm in two parts, A B C D D C B A: schedule()) and pooled per arm, so each component's
gain is a ratio measured side by side under the same drift of the machine's load. In the full run `warm_long` is
the warm arm on an Evolution 4x as long (48 evaluations a part): what a longer loop pays per candidate. Each run's
OUT/timing.json (trainer/warm.py Laps) gives the per-candidate phases: start-up, prepare, trainer process
(inside it: read_input, gate, fit, export), predictor process, score.
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


def timing_breakdown(runs: list[dict], wall_seconds: float, slots: int) -> dict[str, Any]:
    """Pure: the split of slots·wall into fit, trainer-process overhead and loop overhead. `runs`: one per
    training run, {"hypothesis", "ok", "seconds" (wall of the trainer process), "fit_seconds" (the trainer's
    own `train_seconds`, for a run that succeeded), "fit_cpu_seconds" (its CPU seconds in fit)}. The shares
    split the wall; `non_training_share` counts training by CPU seconds (see the module's docstring)."""
    if wall_seconds <= 0 or slots < 1:
        raise ValueError("wall_seconds must be > 0 and slots >= 1")

    def total(key: str) -> float:
        return sum(float(r[key]) for r in runs if r.get("ok") and isinstance(r.get(key), (int, float)))

    return with_shares({
        "evaluations": len(runs),
        "evaluations_ok": sum(1 for r in runs if r.get("ok")),
        "hypotheses_evaluated": len({r["hypothesis"] for r in runs} - {"baseline"}),
        "baseline_evaluations": sum(1 for r in runs if r["hypothesis"] == "baseline"),
        "slot_seconds": slots * wall_seconds,
        "fit_seconds": total("fit_seconds"),
        "fit_cpu_seconds": total("fit_cpu_seconds"),
        "trainer_process_seconds": sum(float(r.get("seconds") or 0.0) for r in runs),
    })


def with_shares(sums: dict[str, Any]) -> dict[str, Any]:
    """Pure: the counts and seconds (ADDITIVE) with the shares of the slot seconds they split into."""
    slot_s, fit_s, process_s = sums["slot_seconds"], sums["fit_seconds"], sums["trainer_process_seconds"]
    return {**sums,
            "share_fit": fit_s / slot_s,
            "share_trainer_overhead": max(process_s - fit_s, 0.0) / slot_s,
            "share_loop_overhead": max(slot_s - process_s, 0.0) / slot_s,
            "non_training_share": max(0.0, 1.0 - sums["fit_cpu_seconds"] / slot_s),
            "non_training_share_wall": 1.0 - fit_s / slot_s}


# Arms, on the same world in one run: the cold path (three fresh Python processes per candidate), warm trainers
# without the prepared-rows cache (the imports' share of the gain), warm trainers whose steps are pre-started
# bubblewrap sandboxes (each importing torch), and warm with the cache and each step a fork of the worker's zygote
# (trainer/zygote.py; the default of the local platform). Each arm runs in REPEATS parts of the same Evolution
# (evaluations_per_part each), scheduled A B C D D C B A (schedule()): a load that drifts during the run falls on
# every arm alike, and each arm's parts are pooled (pool_breakdowns()).
ARMS = {"cold": {"warm": False}, "warm_no_cache": {"warm": True, "warm_cache": 0},
        "warm_bwrap": {"warm": True, "warm_zygote": False}, "warm": {"warm": True}, "warm_long": {"warm": True}}
REPEATS = 2
# Arms whose Evolution has this many times the evaluations (full run only): `warm_long` is the headline arm on an
# Evolution 4x as long, so the costs paid once per Evolution (each slot's imports and zygote, the champion's
# server, a slot idle while the budget's last run confirms) spread over 4x the candidates; the difference of the
# two shares is what those costs weigh in the 12-evaluation figure.
LONG = {"warm_long": 4}


def schedule(arms: list[str] | tuple[str, ...], repeats: int = REPEATS) -> list[tuple[str, int]]:
    """Pure: the order of the parts, (arm, part index): forwards, then backwards, then forwards again..., so
    with 2 repeats A B C D D C B A. Each arm's mean position in the run is the same (a linear drift of the
    machine's load is balanced across the arms)."""
    if repeats < 1:
        raise ValueError("repeats must be >= 1")
    order: list[tuple[str, int]] = []
    for k in range(repeats):
        order += [(a, k) for a in (arms if k % 2 == 0 else list(reversed(arms)))]
    return order


# the counts and seconds that add up over an arm's parts; the shares are recomputed from their sums
ADDITIVE = ("evaluations", "evaluations_ok", "hypotheses_evaluated", "baseline_evaluations", "slot_seconds",
            "fit_seconds", "fit_cpu_seconds", "trainer_process_seconds")


def pool_breakdowns(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Pure: one breakdown for an arm from the timing_breakdown() of each of its parts (separate loops on
    separate drivers: their slot-seconds add up, and so do their hypotheses, which repeat by name)."""
    if not parts:
        raise ValueError("no parts to pool")
    return with_shares({k: sum(p[k] for p in parts) for k in ADDITIVE})


class LoadSampler:
    """The 1-minute load average read every `every` seconds on a thread, while a part runs."""

    def __init__(self, every: float = 2.0):
        import threading

        self.every, self.samples = every, [load_now()[0]]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.samples.append(load_now()[0])

    def __enter__(self) -> "LoadSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.samples.append(load_now()[0])


def run_timings(root: Path, jobs: list[str]) -> list[dict]:
    """Each run's OUT/timing.json (trainer/warm.py Laps), where the platform left it; {} when absent."""
    out = []
    for job in jobs:
        try:
            out.append(json.loads((root / "jobs" / job / "work" / "out" / "timing.json").read_text()))
        except (OSError, ValueError):
            out.append({})
    return out


def phase_means(timings: list[dict]) -> dict[str, Any]:
    """Pure: mean seconds per candidate of each trusted-side lap and each phase inside the contained trainer."""
    rows = [t for t in timings if t.get("seconds")]
    if not rows:
        return {"runs": 0}
    keys = sorted({k for t in rows for k in t["seconds"]})
    inside = sorted({k for t in rows for k in t.get("trainer_phases") or {}})
    return {"runs": len(rows),
            "trusted": {k: round(sum(t["seconds"].get(k, 0.0) for t in rows) / len(rows), 3) for k in keys},
            "trainer_phases": {k: round(sum((t.get("trainer_phases") or {}).get(k, 0.0) for t in rows) / len(rows), 3)
                               for k in inside}}


def run_part(tmp_path: Path, name: str, part: int, data: Path, world: dict, evaluations: int,
             options: dict) -> dict:
    """One part of an arm: the Evolution with a budget of `evaluations`, on a fresh LocalDriver (its own
    folder, worker slots and caches), with the load read while it ran."""
    from cambrian.bench.evolution import evolution_object, run_on_driver

    load_start = load_now()
    obj = evolution_object("throughput", baseline={}, world={**world, "seed": 0}, provider="builtin",
                           evaluations=evaluations, baseline_seeds=2, confirm_seeds=1)
    root = tmp_path / f"run-{name}-{part}"
    with LoadSampler() as load:
        out = run_on_driver(root, obj, data, workers=CORES, **options)
    timings = run_timings(root, [r.job for r in out.runs])
    runs = [{"hypothesis": r.hypothesis, "ok": r.ok, "seconds": r.seconds, "fit_seconds": r.metrics.get("train_seconds"),
             "fit_cpu_seconds": (t.get("trainer_phases") or {}).get("fit_cpu")} for r, t in zip(out.runs, timings)]
    return {"part": part, "wall_seconds": out.wall_seconds, "breakdown": timing_breakdown(runs, out.wall_seconds, CORES),
            "timings": timings, "val_loss_by_run": [[r.hypothesis, r.seed, r.metrics.get("val_loss")] for r in out.runs],
            "stop_reason": out.stop_reason, "load_average_start": load_start, "load_average_end": load_now(),
            "load_samples": load.samples}


def summarise_arm(options: dict, parts: list[dict], positions: list[int]) -> dict:
    """Pure: an arm's figures pooled over its parts (run_part's results; `positions`: each part's place in the
    run's schedule, from 1): hypotheses/h = Σ hypotheses / Σ wall, the shares from the pooled breakdown, the
    per-candidate phases over every run of every part; each part's own figures and load under `parts`."""
    if not parts or len(parts) != len(positions):
        raise ValueError("one schedule position per part")
    b = pool_breakdowns([p["breakdown"] for p in parts])
    wall = sum(p["wall_seconds"] for p in parts)
    samples = [x for p in parts for x in p["load_samples"]]
    return {
        "options": options,
        "hypotheses_per_hour": round(b["hypotheses_evaluated"] / wall * 3600, 2),
        "evaluations_per_hour": round(b["evaluations"] / wall * 3600, 2),
        "non_training_share": round(b["non_training_share"], 4),
        "non_training_share_wall": round(b["non_training_share_wall"], 4),
        "loop_wall_seconds": round(wall, 2),
        "breakdown": {k: (round(v, 4) if isinstance(v, float) else v) for k, v in b.items()},
        "per_candidate": phase_means([t for p in parts for t in p["timings"]]),
        "val_loss_by_run": [row for p in parts for row in p["val_loss_by_run"]],
        "stop_reason": parts[-1]["stop_reason"],
        "load_average_start": parts[0]["load_average_start"],
        "load_average_end": parts[-1]["load_average_end"],
        "load_1min_mean": round(sum(samples) / len(samples), 2),
        "parts": [{"part": p["part"], "position": pos, "loop_wall_seconds": round(p["wall_seconds"], 2),
                   "hypotheses_per_hour": round(p["breakdown"]["hypotheses_evaluated"] / p["wall_seconds"] * 3600, 2),
                   "non_training_share": round(p["breakdown"]["non_training_share"], 4),
                   "evaluations": p["breakdown"]["evaluations"], "stop_reason": p["stop_reason"],
                   "load_average_start": p["load_average_start"], "load_average_end": p["load_average_end"],
                   "load_1min_mean": round(sum(p["load_samples"]) / len(p["load_samples"]), 2)}
                  for p, pos in zip(parts, positions)],
    }


def run(quick: bool = False, arms: tuple[str, ...] | None = None, repeats: int = REPEATS) -> dict:
    t0 = time.perf_counter()
    load_start = load_now()
    arms = tuple(a for a in ARMS if not (quick and a in LONG)) if arms is None else arms
    order = schedule(list(arms), repeats)
    with tempfile.TemporaryDirectory(prefix="cambrian-bench-throughput-") as tmp, pinned(CORES) as cpus:
        tmp_path = Path(tmp)
        users, days = (200, 3) if quick else (None, None)  # full: the default world
        g0 = time.perf_counter()
        data, summary = make_world(tmp_path / "world", users, days)
        world_seconds = time.perf_counter() - g0
        # per part: the 2 baseline seeds and at least one hypothesis (quick: 3); in the full run each part is the
        # whole 12-evaluation Evolution a single pass ran, so its slots' start-up is spread over as many runs
        per_part = 3 if quick else 12
        world = {k: summary["overall"][k] for k in ("users", "days")}
        evaluations = {name: per_part * LONG.get(name, 1) for name in arms}
        done: dict[str, list[tuple[int, dict]]] = {name: [] for name in arms}
        for position, (name, part) in enumerate(order, start=1):
            done[name].append((position, run_part(tmp_path, name, part, data, world, evaluations[name], ARMS[name])))
    results = {name: {**summarise_arm(ARMS[name], [p for _, p in done[name]], [pos for pos, _ in done[name]]),
                      "evaluations_per_part": evaluations[name]} for name in arms}
    head = results.get("warm") or next(iter(results.values()))
    gains = {}
    if "cold" in results:
        cold = results["cold"]["hypotheses_per_hour"]
        for name, r in results.items():
            gains[f"{name}/cold hypotheses_per_hour"] = round(r["hypotheses_per_hour"] / max(cold, 1e-9), 3)
    if "warm_bwrap" in results and "warm" in results:
        gains["warm/warm_bwrap (the zygote's share)"] = round(
            results["warm"]["hypotheses_per_hour"] / max(results["warm_bwrap"]["hypotheses_per_hour"], 1e-9), 3)
    if "warm_no_cache" in results and "warm" in results:
        gains["warm/warm_no_cache (the data cache's share)"] = round(
            results["warm"]["hypotheses_per_hour"] / max(results["warm_no_cache"]["hypotheses_per_hour"], 1e-9), 3)
    if "warm_long" in results and "warm" in results:
        gains["non_training_share warm - warm_long (the per-Evolution costs' weight)"] = round(
            results["warm"]["non_training_share"] - results["warm_long"]["non_training_share"], 4)
    return {
        "name": "throughput",
        "command": "cambrian bench run throughput" + (" --quick" if quick else ""),
        "quick": quick,
        "ratio": head["non_training_share"],
        "ratio_meaning": ("share of the offline loop's slot time (2 workers x wall) not spent in the trainer's "
                          "optimisation loop, counted by the trainers' CPU seconds in it, warm trainers (target < "
                          "0.10); non_training_share_wall counts their wall seconds (which include CPU that other "
                          "processes took from their cores)"),
        "engine": "operator reconcile core on the LocalDriver (cambrian.bench.evolution)",
        "hypotheses_per_hour": head["hypotheses_per_hour"],
        "arms": results,
        "gains": gains,
        "schedule": {"order": [f"{name}#{part}" for name, part in order], "repeats": repeats,
                     "evaluations_per_part": per_part,
                     "how": ("each arm runs in `repeats` parts, each the same Evolution with a budget of "
                             "evaluations_per_part on a fresh LocalDriver, in the order above (forwards, then "
                             "backwards: A B C D D C B A), so a load that drifts during the run falls on every arm "
                             "alike; an arm's figures pool its parts (sums of hypotheses, evaluations, slot, fit and "
                             "trainer seconds; the ratios of the sums); arms.*.parts has each part's figures and load, "
                             "arms.*.load_1min_mean the mean 1-minute load read every 2 s while the arm ran")},
        "evaluation_budget": per_part * repeats,  # per arm; an arm of LONG: that many times more
        "world": {**{k: summary["overall"][k] for k in ("users", "days", "impressions")},
                  "generate_seconds": round(world_seconds, 2)},
        "cores": {"workers": CORES, "pinned_cpus": cpus, "machine_cpus": os.cpu_count()},
        "load_average_start": load_start,
        "load_average_end": load_now(),
        "targets_met": {"non_training_share<0.10": head["non_training_share"] < 0.10,
                        "hypotheses_per_hour>=400": head["hypotheses_per_hour"] >= 400},
        "seconds": round(time.perf_counter() - t0, 2),
    }


if __name__ == "__main__":  # pragma: no cover
    print(json.dumps(run(quick=True), indent=2))
