"""Multi-fidelity in the reconcile core, pure (both platforms): a cheap first look at every candidate, full
training only for those promoted (spec.fidelity; absent, nothing here runs).

A first look is the candidate's Φ for a fraction of its epochs on a fraction of its most recent examples, one
seed (trainer/fidelity.py); one that would train exactly the full run (`is_full_training`) is skipped. It is
judged against the champion at the SAME fidelity: the Evolution trains the
champion's Φ at first-look fidelity with spec.noise.baselineSeeds seeds, once per champion (status
.firstLookReference; locally the runs are kept in the run store and reused by a later Evolution on the same data).
Their mean is the reference and their spread the noise floor of one first-look seed. The baseline's first look
that would be its full training is not trained: its own noise-floor runs are those runs (`from_baseline_runs`).

Promotion rule: gain >= promote.minGainFloors x floor (default -1). It is per candidate, so it is decided the
moment a first look finishes (no waiting for the wake-up's other candidates, nothing to re-rank on a restart),
and in the units the loop already trusts (noise floors). The default stops only candidates that are measurably
worse than the champion after the same short training, the cases full training rarely turns around; a higher
bar saves more full trainings and risks discarding slow starters (a smaller learning rate, more regularisation),
which is what the benchmark's "winners discarded" counts.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Callable, Mapping, Sequence

from cambrian.operator.api import (EvolutionSpec, EvolutionStatus, FirstLookReference, Noise, OfflineMetric,
                                   ProxyMetric, Promote)
from cambrian.operator.reconcile import noise as N
from cambrian.operator.reconcile.actions import CreateTrainingJob, Owner
from cambrian.operator.reconcile.common import Meta, child_name, data_snapshot
from cambrian.operator.reconcile.observations import JobObservation
from cambrian.stats.noise import baseline_seeds, gain_of, noise_floor

READY = "FirstLookReady"  # the Evolution's condition: the first looks' reference is measured


@dataclass(frozen=True)
class FirstLookJudgement:
    gain: float
    floor: float
    promoted: bool
    reason: str


def judge(objective: OfflineMetric, metrics: Mapping[str, float], reference: Mapping[str, ProxyMetric],
          noise: Noise, promote: Promote) -> FirstLookJudgement | None:
    """The first look's gain over the champion at the same fidelity, against one seed's noise floor there.
    None when either lacks the metric (the caller then trains in full: nothing to stop it on)."""
    value, ref = metrics.get(objective.metric), reference.get(objective.metric)
    if value is None or ref is None:
        return None
    base = N.score_of(ref)
    gain = gain_of(value, base.mean, objective.direction == "minimize")
    floor = noise_floor(base, None, 1, noise)
    bar = promote.min_gain_floors * floor
    promoted = gain >= bar
    reason = (f"first look: {objective.metric} {value:.5g} vs champion {base.mean:.5g}±{base.std:.2g} at the same "
              f"fidelity: gain {gain:+.3g} = {gain / floor:+.2f} noise floors of {floor:.3g}; "
              + (f"promoted to full training (rule: at least {promote.min_gain_floors:+g} floors)" if promoted else
                 f"stopped: below {promote.min_gain_floors:+g} floors ({bar:+.3g}), never trained in full"))
    return FirstLookJudgement(gain, floor, promoted, reason)


def is_full_training(baseline: Mapping[str, Any], delta: Any, fidelity: Mapping[str, float]) -> bool:
    """The first look would train exactly what the full run trains (every row kept and the epochs round to all of
    them, e.g. a one-epoch Φ with sampleFraction 1): it would only train the candidate twice. `delta` None: the
    champion's own Φ."""
    from cambrian.errors import ConfigError
    from cambrian.trainer.config import parse_config
    from cambrian.trainer.delta import apply_delta
    from cambrian.trainer.fidelity import at_fidelity

    try:
        champion = parse_config(baseline, "baseline")
        phi = champion if delta is None else apply_delta(champion, delta)
    except ConfigError:  # no longer applies to a new champion: its first look's run says so, as it did before
        return False
    return at_fidelity(phi, fidelity) == phi


def look_job_name(meta: Meta, run: int) -> str:
    return child_name(meta.name, meta.uid, f"look-{run}")


# --------------------------------------------------------------------------------- the Evolution's reference


def champion_of(st: EvolutionStatus) -> str:
    """The key of the champion's reference: "baseline" for the spec's baseline, "hypothesis/NAME" for a launched one
    (no object name holds a "/", so a Hypothesis named "baseline" does not inherit the baseline's reference)."""
    return f"hypothesis/{st.champion.hypothesis}" if st.champion.hypothesis else "baseline"


def reference_runs(meta: Meta, champion: str, config: Mapping[str, Any], fidelity: Mapping[str, float],
                   n: int) -> list[tuple[int, str]]:
    """(seed, job name) of each run of `champion`'s reference: Φ `config` at the first-look `fidelity`, `n` seeds.
    The names carry a hash of all that defines the runs: a reference measured again (other fractions, another Φ)
    must never find an earlier reference's Jobs under its names and take their metrics as its own (locally jobs/ is
    kept for good; in the cluster a Job lives 24 h)."""
    seeds = baseline_seeds(N.base_seed(config), n)
    key = hashlib.sha256(json.dumps({"phi": dict(config), "fidelity": dict(fidelity), "seeds": seeds},
                                    sort_keys=True).encode()).hexdigest()[:8]
    return [(seed, child_name(meta.name, meta.uid, f"look-{champion}-{key}-s{i}")) for i, seed in enumerate(seeds)]


def reference_job_names(meta: Meta, spec: EvolutionSpec, st: EvolutionStatus, config: Mapping[str, Any]) -> list[str]:
    """The current champion's (Φ `config`) first-look runs: what the platform must report to the Evolution (empty
    when none is due: fidelity off, the baseline's own seeds are the reference, or the reference of this champion is
    measured or given up)."""
    if spec.fidelity is None or settled(spec, st):
        return []
    if from_baseline_runs(spec, st):  # parses Φ: only while no reference is measured
        return []
    return [name for _, name in reference_runs(meta, champion_of(st), config, spec.fidelity.wire_first_look(),
                                               spec.noise.baseline_seeds)]


def from_baseline_runs(spec: EvolutionSpec, st: EvolutionStatus) -> bool:
    """The baseline is champion and its first look would be its full training: its own noise-floor runs are
    exactly the reference's runs (the same Φ, seeds and rows), so they are the reference; nothing trains twice."""
    return (spec.fidelity is not None and champion_of(st) == "baseline"
            and is_full_training(spec.baseline, None, spec.fidelity.wire_first_look()))


def current(spec: EvolutionSpec, st: EvolutionStatus) -> bool:
    """The stored reference is of this champion at these fractions (else it is measured again)."""
    ref, f = st.first_look_reference, spec.fidelity
    return (ref is not None and f is not None and ref.champion == champion_of(st)
            and ref.epoch_fraction == f.first_look.epoch_fraction and ref.sample_fraction == f.first_look.sample_fraction)


def settled(spec: EvolutionSpec, st: EvolutionStatus) -> bool:
    """This champion's reference is measured, or given up (a run failed)."""
    ref = st.first_look_reference
    return current(spec, st) and bool(ref.metrics or ref.failed)  # type: ignore[union-attr]


def reference_for(spec: EvolutionSpec | None, st: EvolutionStatus) -> tuple[dict[str, ProxyMetric], str | None]:
    """What a Hypothesis's first look is judged against: (metrics, why there will be none). ({}, None): wait."""
    if spec is None or spec.fidelity is None or not current(spec, st):
        return {}, None
    ref = st.first_look_reference
    return dict(ref.metrics), ref.failed  # type: ignore[union-attr]


def evaluations(spec: EvolutionSpec, st: EvolutionStatus) -> int:
    """Training runs the Evolution's first-look references cost (counted when started)."""
    ref = st.first_look_reference
    return spec.noise.baseline_seeds * ref.measured if ref is not None else 0


def measure_reference(meta: Meta, spec: EvolutionSpec, st: EvolutionStatus, config: Mapping[str, Any],
                      jobs: Sequence[JobObservation], owner: Owner, now: datetime, actions: list,
                      journal: Callable[..., None], cond: Callable[..., None]) -> None:
    """Train the champion's Φ (`config`) at first-look fidelity with spec.noise.baselineSeeds seeds, in parallel,
    once per champion. A failed run does not stop the loop: the first looks are then promoted (trained in full),
    which is the loop without multi-fidelity."""
    f = spec.fidelity
    if f is None:
        return
    champion = champion_of(st)
    if settled(spec, st):
        return  # measured or given up: nothing to do (and Φ is not parsed on every reconcile)
    reuse = from_baseline_runs(spec, st)
    if not current(spec, st):
        prev = st.first_look_reference
        st.first_look_reference = FirstLookReference(
            champion=champion, epoch_fraction=f.first_look.epoch_fraction, sample_fraction=f.first_look.sample_fraction,
            measured=(prev.measured if prev is not None else 0) + (0 if reuse else 1))
    ref = st.first_look_reference
    assert ref is not None
    if reuse:
        if not st.baseline_runs:
            cond(READY, False, "Measuring", "baseline at first-look fidelity: its own seeds, which are training "
                                            "(its first look is its full training)")
            return
        ref.runs = [r.model_copy() for r in st.baseline_runs]
        ref.metrics = dict(st.baseline_metrics)
        cond(READY, True, "BaselineRuns", "the baseline's own seeds: its first look is its full training")
        journal("FirstLookReference", f"baseline at first-look fidelity: its own {len(ref.runs)} seeds, since its "
                                      f"first look would be its full training (nothing trained again)")
        return
    by_name = {j.name: j for j in jobs}
    runs = reference_runs(meta, champion, config, f.wire_first_look(), spec.noise.baseline_seeds)
    seeds, names = [seed for seed, _ in runs], [name for _, name in runs]
    for i, (seed, name) in enumerate(runs):
        job = by_name.get(name)
        if job is None:
            actions.append(CreateTrainingJob(
                name=name, owner=owner, hypothesis=None, attempt=1, baseline=N.with_seed(config, seed), delta=None,
                training=spec.training.wire(), data=spec.data.wire(), storage_claim=spec.storage.claim_name,
                bundle_path=f"bundles/{meta.name}/first-look/{champion}-s{i}", fidelity=f.wire_first_look(),
                data_snapshot=data_snapshot(meta.uid, spec.data.wire())))
        elif job.state not in N.RUNNING and (job.state != "Succeeded" or not N.numeric(job.metrics)):
            ref.failed = (f"first-look run {job.name} of {champion} (seed {seed}) {job.state.lower()}: "
                          f"{job.message or job.reason or 'no metrics'}")
            cond(READY, False, "ReferenceFailed", f"{ref.failed}; candidates train in full without a first look")
            journal("FirstLookReferenceFailed", ref.failed, warning=True)
            return
    done = [by_name[n] for n in names if n in by_name and by_name[n].state == "Succeeded"]
    if len(done) < len(names):
        cond(READY, False, "Measuring", f"{champion} at first-look fidelity: {len(done)} of {len(names)} seeds trained")
        return
    ref.runs = [N.seed_run(seed, by_name[n]) for seed, n in zip(seeds, names)]
    ref.metrics = N.proxy_metrics([r.metrics for r in ref.runs])
    summary = ", ".join(f"{k}={v.value:.5g}±{v.std or 0:.2g}" for k, v in ref.metrics.items())
    cond(READY, True, "Measured", f"{champion} at first-look fidelity over {len(seeds)} seeds")
    journal("FirstLookReference", f"{champion} at first-look fidelity ({f.first_look.epoch_fraction:g} of the epochs, "
                                  f"{f.first_look.sample_fraction:g} of the examples), {len(seeds)} seeds: {summary}")
