"""The offline loop as the benchmarks run it: an Evolution object (the CRD's pydantic model) reconciled by the
operator's core on the LocalDriver, and its evaluations read back afterwards.

    obj = evolution_object("search", baseline=phi, provider="builtin", evaluations=10)
    out = run_on_driver(root, obj, data, workers=2)
    out.runs    # one Run per training run (= evaluation), in the order they finished

A Run's metrics are what the stored objects' status reports (a Hypothesis's `seedRuns`, the Evolution's
`baselineRuns`); the platform's record of the same training run gives its order, wall time and bundle, and
failed runs (which no status keeps per run). The count is checked against the evaluations the core spent.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

SIM_DAYS = 1.0  # simulated-time limit: 288 wake-ups at the default 5-minute cadence, far more than a budget needs


def evolution_object(name: str, *, baseline: dict[str, Any], world: dict[str, int], provider: str = "builtin",
                     model: str | None = None, evaluations: int, baseline_seeds: int = 2, confirm_seeds: int = 1,
                     one_wakeup: bool = False, fidelity: dict[str, Any] | None = None,
                     offline: dict[str, Any] | None = None) -> dict[str, Any]:
    """An Evolution manifest (validated by the CRD's model). `one_wakeup`: the agents wake up once (the
    recorded LLM answers cover one wake-up only); otherwise every 5 simulated minutes until the budget is spent.
    `fidelity`: spec.fidelity (multi-fidelity), absent by default. `offline`: spec.objective.offline, the default's
    by default.
    `world`: users, days and seed of the generated world the driver is given (spec.data names the same world)."""
    from cambrian.operator import api
    from cambrian.operator.local_driver import NO_REVIEW  # the offline loop alone: no Rollout is ever started

    obj = {
        "apiVersion": api.API_VERSION, "kind": "Evolution", "metadata": {"name": name},
        "spec": {
            "baseline": baseline,
            # northStar is required by the CRD; no rollout runs in a bench, so it is never read
            "objective": {"northStar": [{"name": "watch_minutes", "direction": "maximize"}],
                          **({"offline": offline} if offline is not None else {})},
            "agent": {"provider": provider, **({"model": model} if model else {}),
                      "budgets": {"evaluations": evaluations}},
            "cadence": {"offline": f"{int(SIM_DAYS) + 1}d" if one_wakeup else "5m", "online": NO_REVIEW},
            "noise": {"baselineSeeds": baseline_seeds, "confirmSeeds": confirm_seeds},
            "training": {"gpu": {"count": 0}},
            "data": {"world": world},
            **({"fidelity": fidelity} if fidelity is not None else {}),
        },
    }
    api.parse_resource(obj)
    return obj


@dataclass
class Run:
    """One training run of the loop (one evaluation against the budget)."""

    hypothesis: str  # "baseline" for the baseline's seeds
    job: str
    ok: bool
    seed: int | None
    metrics: dict[str, float]
    bundle: str | None  # a folder on this machine
    seconds: float  # wall time of the sandboxed trainer process
    finished_at: datetime | None
    persona: str | None = None
    delta: dict[str, Any] | None = None
    first_look: bool = False  # a run at first-look fidelity (spec.fidelity): a candidate's or the champion's


@dataclass
class LoopResult:
    runs: list[Run]
    stop_reason: str
    wall_seconds: float
    evolution: dict[str, Any] = field(default_factory=dict)  # the stored object with its final status


def run_on_driver(root: Path, obj: dict[str, Any], data: Path, *, workers: int, threads: int = 1,
                  wall_seconds: float = 1800, proposer: Any = None, train_command: list[str] | None = None,
                  warm: bool = True, warm_cache: int = 4, warm_zygote: bool = True) -> LoopResult:
    """Reconcile the Evolution on a LocalDriver in `root` until its budget is spent (or it has nothing left
    to do), with `workers` sandboxed training runs at once, each on `threads` CPU threads.
    `train_command`: another trainer with `cambrian train`'s contract (tests); default: the real one."""
    from cambrian.agents.settings import RunLimits
    from cambrian.operator.local_driver import LocalDriver

    driver = LocalDriver(root, data_dir=data, workers=workers, max_days=SIM_DAYS, proposer=proposer,
                         limits=RunLimits(threads=threads, wall_seconds=wall_seconds), train_command=train_command,
                         warm=warm, warm_cache=warm_cache, warm_zygote=warm_zygote)
    driver.apply([obj])
    started = time.perf_counter()
    summary = driver.run()
    wall = time.perf_counter() - started
    evo = driver.store.get("evolutions", "default", obj["metadata"]["name"]) or {}
    return LoopResult(runs(driver, evo), summary.reason, wall, evo)


def runs(driver: Any, evo: dict[str, Any]) -> list[Run]:
    """Every training run of the Evolution and its Hypotheses, in the order they finished."""
    from cambrian.operator import api
    from cambrian.operator.localstore import NAMESPACE
    from cambrian.operator.platform.local import local_path
    from cambrian.operator.reconcile import evolution as E
    from cambrian.operator.reconcile import fidelity as FI
    from cambrian.operator.reconcile.actions import Owner
    from cambrian.operator.reconcile.common import Meta
    from cambrian.operator.reconcile.views import spend

    name = evo["metadata"]["name"]
    status = api.parse_status("Evolution", evo.get("status"))
    spec = api.parse_spec("Evolution", evo["spec"])
    hyps = [h for h in driver.store.list("hypotheses", NAMESPACE)
            if ((h.get("spec") or {}).get("evolutionRef") or {}).get("name") == name]
    ref = status.first_look_reference
    looks: dict[str, Any] = {}  # first-look runs, by job
    if ref is not None:
        fractions = {"epochFraction": ref.epoch_fraction, "sampleFraction": ref.sample_fraction}
        config = E.effective_baseline(spec, status)  # the champion's Φ: what its reference trains
        looks.update({n: None for _, n in FI.reference_runs(Meta(name, evo["metadata"]["uid"]), ref.champion, config,
                                                            fractions, spec.noise.baseline_seeds)})
    owners = [(Owner("Evolution", name, evo["metadata"]["uid"], NAMESPACE), "baseline",
               {r.job: r for r in [*status.baseline_runs, *(ref.runs if ref is not None else [])]}, {})]
    for h in hyps:
        st = api.parse_status("Hypothesis", h.get("status"))
        recorded = {r.job: r for r in st.seed_runs}
        if st.first_look is not None:
            fl = st.first_look
            meta = Meta(h["metadata"]["name"], h["metadata"]["uid"], NAMESPACE)
            looks.update({FI.look_job_name(meta, k): None for k in range(1, fl.runs + 1)})  # failed ones too
            if fl.metrics:
                recorded[fl.job] = api.SeedRun(seed=fl.seed, job=fl.job, metrics=fl.metrics)
        owners.append((Owner("Hypothesis", h["metadata"]["name"], h["metadata"]["uid"], NAMESPACE), h["metadata"]["name"],
                       recorded, h.get("spec") or {}))
    out = []
    for owner, label, recorded, hspec in owners:
        for job in driver.platform.training_jobs(owner):
            seed_run = recorded.get(job.name)  # a run the core recorded (succeeded and reported its metric)
            bundle = local_path(job.bundle_uri, driver.root) if job.bundle_uri and seed_run else None
            seconds = ((job.finished_at - job.started_at).total_seconds()
                       if job.started_at and job.finished_at else 0.0)
            out.append(Run(hypothesis=label, job=job.name, ok=seed_run is not None,
                           seed=seed_run.seed if seed_run else None, metrics=dict(seed_run.metrics) if seed_run else {},
                           bundle=str(bundle) if bundle else None, seconds=seconds, finished_at=job.finished_at,
                           persona=(hspec.get("origin") or {}).get("persona"), delta=hspec.get("delta"),
                           first_look=job.name in looks))
    # what the core counts against the budget (the champion's first-look seeds included)
    spent = spend(hyps, baseline_attempts=E.evolution_runs(spec, status))
    if len(out) != spent.evaluations:
        raise RuntimeError(f"evolution {name}: {len(out)} training runs on the platform, but the status counts "
                           f"{spent.evaluations} evaluations")
    out.sort(key=lambda r: (r.finished_at.timestamp() if r.finished_at else float("inf"), r.job))
    return out
