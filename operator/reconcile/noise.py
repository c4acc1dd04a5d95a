"""The offline noise floor in the reconcile core, pure (both platforms): the baseline trained with
several seeds, a hypothesis's metrics over its seeds, the verdict against the champion, the seeds of
confirmation runs. The arithmetic is stats/noise.py, shared with local evolve.

Reference of a gain: the baseline's metrics over spec.noise.baselineSeeds seeds (Evolution
status.baselineMetrics) until a hypothesis is launched, then that hypothesis's metrics over its seeds.
"""

from __future__ import annotations

import copy
from datetime import datetime
from typing import Any, Callable, Mapping, Sequence

from cambrian.operator.api import (Champion, EvolutionSpec, EvolutionStatus, Noise, OfflineMetric, ProxyMetric,
                                   SeedRun)
from cambrian.operator.reconcile.actions import CreateTrainingJob, Owner
from cambrian.operator.reconcile.common import Meta, child_name, data_snapshot, note_blocker
from cambrian.operator.reconcile.observations import JobObservation
from cambrian.stats.noise import Judgement, Score, baseline_seeds, judge, mean_std

RUNNING = ("Pending", "Suspended", "Running")


def base_seed(config: Mapping[str, Any]) -> int:
    """The training seed of a configuration Φ (the trainer's default when it names none)."""
    from cambrian.trainer.config import parse_config

    return parse_config(dict(config)).training.seed


def with_seed(config: Mapping[str, Any], seed: int) -> dict[str, Any]:
    """Φ trained with another seed: nothing else changes."""
    out = copy.deepcopy(dict(config))
    out["training"] = {**(out.get("training") or {}), "seed": int(seed)}
    return out


def numeric(metrics: Mapping[str, Any] | None) -> dict[str, float]:
    return {k: float(v) for k, v in (metrics or {}).items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def proxy_metrics(runs: Sequence[Mapping[str, float]]) -> dict[str, ProxyMetric]:
    """Each metric's mean over the runs that reported it, with its seed-to-seed std and standard error."""
    out: dict[str, ProxyMetric] = {}
    for name in sorted({k for r in runs for k in r}):
        m, sd, n = mean_std(r[name] for r in runs if name in r)
        out[name] = ProxyMetric(value=m, std=sd if n > 1 else None, stderr=sd / n**0.5 if n > 1 else None, seeds=n)
    return out


def score_of(pm: ProxyMetric) -> Score:
    return Score(mean=pm.value, std=pm.std or 0.0, n=max(pm.seeds, 1))


def verdict(objective: OfflineMetric, metrics: Mapping[str, ProxyMetric], reference: Mapping[str, ProxyMetric],
            noise: Noise) -> Judgement | None:
    """The candidate's gain over the reference against the noise floor; None when either lacks the metric."""
    cand, ref = metrics.get(objective.metric), reference.get(objective.metric)
    if cand is None or ref is None:
        return None
    return judge(objective.metric, score_of(cand), score_of(ref), objective.direction == "minimize", noise)


def may_roll_out(verdict: str | None) -> bool:
    """Only a gain that cleared the noise floor over several seeds is ever put in a Rollout."""
    return verdict == "better"


def reference_metrics(status: EvolutionStatus, champion_status: Mapping[str, Any] | None) -> dict[str, ProxyMetric]:
    """What gains are measured against: the launched champion's metrics over its seeds (kept in the Evolution's
    status at its launch; from its Hypothesis's status for a launch recorded before that), else the baseline's.
    `champion_status`: the champion Hypothesis's stored status (None while the baseline is champion, or once its
    object is deleted). A launched champion whose metrics are nowhere gives no reference (candidates wait), never
    the baseline's: gains over a model no longer in production would be judged."""
    if status.champion.hypothesis:
        if status.champion.proxy_metrics:
            return dict(status.champion.proxy_metrics)
        return {k: ProxyMetric.model_validate(v) for k, v in ((champion_status or {}).get("proxyMetrics") or {}).items()}
    return dict(status.baseline_metrics)


# --------------------------------------------------------------------------------------------- the baseline


def baseline_job_name(meta: Meta, index: int = 0) -> str:
    return child_name(meta.name, meta.uid, "baseline" if index == 0 else f"baseline-s{index}")


def baseline_job_names(meta: Meta, spec: EvolutionSpec) -> list[str]:
    return [baseline_job_name(meta, i) for i in range(spec.noise.baseline_seeds)]


def measure_baseline(meta: Meta, spec: EvolutionSpec, st: EvolutionStatus, jobs: Sequence[JobObservation],
                     owner: Owner, now: datetime, actions: list, journal: Callable[..., None],
                     cond: Callable[..., None]) -> bool:
    """Train the baseline with spec.noise.baselineSeeds seeds (in parallel); once all succeeded it is the
    champion (the first seed's bundle) and its metrics over the seeds are the noise floor's reference.
    Returns False when a run failed: the Evolution is then Failed (status and journal set here)."""
    by_name = {j.name: j for j in jobs}
    seeds = baseline_seeds(base_seed(spec.baseline), spec.noise.baseline_seeds)
    names = baseline_job_names(meta, spec)
    for i, (seed, name) in enumerate(zip(seeds, names)):
        job = by_name.get(name)
        if job is None:
            actions.append(CreateTrainingJob(
                name=name, owner=owner, hypothesis=None, attempt=1,
                baseline=spec.baseline if i == 0 else with_seed(spec.baseline, seed), delta=None,
                training=spec.training.wire(), data=spec.data.wire(), storage_claim=spec.storage.claim_name,
                bundle_path=f"bundles/{meta.name}/baseline" + (f"-s{i}" if i else ""),
                data_snapshot=data_snapshot(meta.uid, spec.data.wire()),
            ))
        elif job.state not in RUNNING and (job.state != "Succeeded" or not job.bundle_uri):
            why = (f"baseline job {job.name} (seed {seed}) {job.state.lower()}: "
                   f"{job.message or job.reason or 'no bundle'}")
            st.phase, st.reason = "Failed", why
            cond("ChampionReady", False, "BaselineFailed", why)
            cond("Ready", False, "BaselineFailed", why)
            journal("Failed", why, warning=True)
            return False
    done = sum(by_name[n].state == "Succeeded" for n in names if n in by_name)
    if done < len(seeds):
        cond("ChampionReady", False, "TrainingBaseline",
             f"baseline: {done} of {len(seeds)} seeds trained (the noise floor needs every one)")
        # every seed has the same spec, so what blocks one blocks all: report the first seed's (one message)
        first = by_name.get(names[0])
        stuck = first.blocked if first is not None and first.state in RUNNING else None
        note_blocker(st, "ChampionReady", f"baseline job {names[0]}: {stuck}" if stuck else None, now,
                     meta.generation, journal)
        return True
    note_blocker(st, "ChampionReady", None, now, meta.generation, journal)
    first = by_name[baseline_job_name(meta, 0)]
    st.baseline_runs = [seed_run(seed, by_name[n]) for seed, n in zip(seeds, names)]
    st.baseline_metrics = proxy_metrics([r.metrics for r in st.baseline_runs])
    st.champion = Champion(name="baseline", bundle=first.bundle_uri, config=spec.baseline, since=now)
    cond("ChampionReady", True, "Baseline", "the baseline model is the champion")
    floors = ", ".join(f"{k}={v.value:.5g}±{v.std or 0:.2g}" for k, v in st.baseline_metrics.items())
    reused = sum(r.reused is not None for r in st.baseline_runs)
    stored = f" ({reused} of them from the run store, not trained again)" if reused else ""
    journal("ChampionChanged", f"baseline trained with {len(seeds)} seeds{stored}: {floors}", bundle=first.bundle_uri,
            metrics=numeric(first.metrics))
    return True


def seed_run(seed: int, job: JobObservation) -> SeedRun:
    return SeedRun(seed=seed, job=job.name, metrics=numeric(job.metrics), reused=job.reused)
