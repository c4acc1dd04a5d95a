"""Hypothesis lifecycle, pure: Proposed -> Validated -> Training -> Scored -> Live -> Launched | Retired,
or Failed / Rejected with a reason. Live -> Scored when its rollout decided nothing about it (a launch replaced
the rollout's control, or its Evolution ended the rollout): the online review may test it again, against the
current champion.

Scoring against the noise floor (noise.py, stats/noise.py): the first run's gain over the champion is
judged; a promising one stays in Training while spec.noise.confirmSeeds more seeds train (in parallel),
then it is Scored with the verdict over all its seeds. Only verdict "better" is ever rolled out.
With spec.fidelity (fidelity.py), Training starts with a cheap first look: a promoted one then trains in full as
above; a stopped one is Scored (verdict not_better, status.firstLook says why) without a full run.

`reconcile(meta, spec, status, ctx, job, rollout, now)` never reads a clock or the cluster: the
caller passes what it observed. Re-running it from the last persisted status gives the same child
names (attempt number is in the name), so a crash between creating a Job and saving the status
re-issues a create that finds the Job already there.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Callable, Sequence

from cambrian.errors import ConfigError
from cambrian.operator.api import (EvolutionSpec, FirstLookStatus, HypothesisSpec, HypothesisStatus, OnlineResult,
                                   ProxyMetric, SpendLedger)
from cambrian.operator.reconcile import confirmation as CF
from cambrian.operator.reconcile import fidelity as F
from cambrian.operator.reconcile import ledger as L
from cambrian.operator.reconcile import noise as N
from cambrian.operator.reconcile.actions import (A_SPEND_COUNTED, APPLIED_SUPERSEDED, CreateTrainingJob, Owner,
                                                 RecordJournal)
from cambrian.operator.reconcile.common import (Meta, Result, blocked, child_name, data_snapshot, note_blocker,
                                                resume_after_spec_change, set_condition)
from cambrian.operator.reconcile.ledger import parse_mark
from cambrian.operator.reconcile.observations import HypothesisView, JobObservation, RolloutView, Spend
from cambrian.operator.reconcile.views import evaluations
from cambrian.stats.noise import confirmation_seeds

# A trained Hypothesis whose judgement waits on the Evolution (no event of its own will come).
WAITING_FOR_BASELINE = "WaitingForBaseline"
TERMINAL = ("Launched", "Retired", "Failed", "Rejected")
# condition Live's reasons while its concluded rollout waits for the Evolution's decision (launched, final, or overtaken)
AWAITING_LAUNCH, AWAITING_DECISION = "AwaitingLaunch", "AwaitingDecision"
SUPERSEDED = "Superseded"  # condition Live's reason once back in Scored: its rollout decided nothing about it
UNDECIDED = "Undecided"  # condition Live's reason once Retired after spec.experiment.maxTests such rollouts
MAX_TESTS = 16  # status.undecidedTests' length (spec.experiment.maxTests' bound)
POLL_SECONDS = 30.0
# requeue_after of an admission (reconcile's admit_first): step again at once, from the persisted Validated
ADMITTED = 0.0
# Exit codes of `cambrian train` (docs/CONTRACTS.md): 2 invalid config/delta, 3 gate failed, 4 training failed.
NO_RETRY_EXIT_CODES = {2: "invalid", 3: "gate"}


@dataclass(frozen=True)
class EvolutionContext:
    """What a Hypothesis needs from its Evolution."""

    name: str
    uid: str
    spec: EvolutionSpec
    baseline: dict[str, Any]  # the champion's Φ (the spec's baseline until a launch)
    budget_exhausted: str | None = None  # the budget's name when one is spent (by the Evolution's saved spend)
    # the champion's offline metrics over its seeds, which gains are measured against (noise.reference_metrics)
    reference: dict[str, ProxyMetric] = field(default_factory=dict)
    # spec.fidelity: the champion's metrics at first-look fidelity over its seeds (reconcile/fidelity.py), empty
    # while they train; `first_look_unavailable` says why there will be none (its runs failed)
    first_look_reference: dict[str, ProxyMetric] = field(default_factory=dict)
    first_look_unavailable: str | None = None
    # runs the Evolution itself started (its baseline's seeds, its first-look references), and its Hypotheses: read
    # under an evaluations budget whenever a run may start, as the Evolution's saved spend lags (runs_left)
    evolution_runs: int = 0
    peers: Callable[[], Sequence[HypothesisView]] = lambda: ()
    # the Evolution's saved status.spendLedger: its Hypotheses' runs are counted after they are deleted too
    ledger: SpendLedger = field(default_factory=SpendLedger)
    # rollouts whose decision the Evolution applied (None: not known, a concluded rollout's decision is final at
    # once), and those that decided nothing about their treatment (a promotion over a control no longer the
    # champion, or a rollout the Evolution ended: evolution.py step 3): their hypotheses go back to Scored
    decided: frozenset[str] | None = None
    superseded: frozenset[str] = frozenset()


def runs_left(meta: Meta, st: HypothesisStatus, ctx: EvolutionContext) -> int | None:
    """The evaluations budget's runs left as this Hypothesis starts one (None: no such budget), counted from its own
    status and what it sees of its peers' now, with what the Evolution's ledger holds of deleted ones. The
    Evolution's saved spend lags: in the cluster each Hypothesis is stepped on its own, so every new one of a
    wake-up read the same spend and started a run past the cap."""
    cap = ctx.spec.agent.budgets.evaluations
    if cap is None:
        return None
    me = L.Seen(meta.name, st.phase, Spend(evaluations=evaluations(st.wire())),
                parse_mark(meta.annotations.get(A_SPEND_COUNTED)))
    seen = [L.seen(p) for p in ctx.peers() if p.name != meta.name] + [me]
    return max(0, cap - ctx.evolution_runs - L.total(ctx.uid, ctx.ledger, seen).evaluations)


def _budget_spent(st: HypothesisStatus, why: str, actions, journal, move, cond) -> Result[HypothesisStatus]:
    """A run that failed for want of infrastructure is retried, unless the evaluations budget is spent: a retry is
    a run like any other (stage `budget`: no proposer is asked to repair it)."""
    return _fail(st, f"{why}; not retried: the evaluations budget is spent", "budget", actions, journal, move, cond)


def spent_budget(meta: Meta, st: HypothesisStatus, ctx: EvolutionContext) -> str | None:
    """The budget that is spent, if any: no run may start."""
    return ctx.budget_exhausted or ("evaluations" if runs_left(meta, st, ctx) == 0 else None)


def owner_of(meta: Meta) -> Owner:
    return Owner("Hypothesis", meta.name, meta.uid, meta.namespace)


def job_name(meta: Meta, attempt: int) -> str:
    return child_name(meta.name, meta.uid, f"train-{attempt}")


def bundle_path(meta: Meta, attempt: int) -> str:
    return f"bundles/{meta.name}/attempt-{attempt}"


def reconcile(
    meta: Meta,
    spec: HypothesisSpec,
    status: HypothesisStatus,
    ctx: EvolutionContext | None,
    jobs: Sequence[JobObservation],
    rollout: RolloutView | None,
    now: datetime,
    evolution_problem: str | None = None,
    admit_first: bool = False,
) -> Result[HypothesisStatus]:
    """`jobs`: every training Job of this hypothesis the platform sees (any attempt).
    `evolution_problem`: why `ctx` is None although the Evolution exists (its spec is invalid, it failed).
    `admit_first`: a Proposed Hypothesis' validation (Validated, or Rejected/Failed) is returned on its own, with
    no action that creates anything and `requeue_after=0` (step again at once): the caller persists that answer
    before the Job's requests (the cluster operator, so a burst of new Hypotheses gets its phases at the pace
    of one status write each; issue 16). The next reconcile goes on from Validated as it would have."""
    if blocked(status, meta.generation):
        return Result([], status.model_copy(deep=True))
    st = status.model_copy(deep=True)
    resumed = resume_after_spec_change(st, meta.generation, "Proposed", now)
    if resumed:  # validated again, against today's champion
        st.failure_stage, st.baseline = None, None
    st.observed_generation = meta.generation
    owner = owner_of(meta)
    actions: list = []

    def journal(event: str, message: str, warning: bool = False, **data: Any) -> None:
        actions.append(RecordJournal(owner, event, message, data, warning))

    def move(phase: str, reason: str | None = None) -> None:
        st.phase = phase  # type: ignore[assignment]
        st.reason = reason

    def cond(type_: str, ok: bool | str, reason: str, message: str = "") -> None:
        st.conditions = set_condition(st.conditions, type_, ok, reason, message, now, meta.generation)

    if resumed:
        journal("Resumed", resumed)
    if st.phase is None:
        move("Proposed")
        journal("Proposed", f"{spec.component} hypothesis proposed: {spec.explanation[:200]}")

    if st.phase in TERMINAL:
        return Result(actions, st)

    if ctx is None:
        if evolution_problem:
            cond("Ready", False, "EvolutionNotReady", f"Evolution {spec.evolution_ref.name}: {evolution_problem}")
        else:
            cond("Ready", False, "EvolutionNotFound", f"Evolution {spec.evolution_ref.name} does not exist")
        return Result(actions, st, requeue_after=POLL_SECONDS)

    if st.baseline is not None and st.phase != "Proposed":  # its runs train the Φ it was validated against
        ctx = replace(ctx, baseline=st.baseline)
    if st.phase == "Proposed":
        try:
            from cambrian.agents.canonical import changes_nothing
            from cambrian.trainer.delta import apply_delta
            from cambrian.trainer.config import parse_config

            base, delta = parse_config(ctx.baseline, "baseline"), spec.trainer_delta()
            phi = apply_delta(base, delta)
            if changes_nothing(base, delta, ctx.spec.data.declared_label()):  # its verdict: the champion against itself
                raise ConfigError("the delta changes nothing: applied to the baseline it gives the baseline's own "
                                  "configuration (up to the training seed and the spelling of the reward's SQL)")
            if delta.component == "reward" and ctx.spec.objective.offline.reward.metric == "val_loss":
                # val_loss is measured on the run's own label: a reward of constant 0 would win
                raise ConfigError("a reward change cannot be scored by val_loss (spec.objective.offline.reward): it "
                                  "redefines the label val_loss is measured on; name a proxy of the data's declaration")
        except ConfigError as exc:
            move("Rejected", str(exc))
            st.failure_stage = "static"
            cond("Ready", False, "Rejected", str(exc))
            journal("Rejected", str(exc), warning=True)
            return Result(actions, st)
        if spec.delta.code is not None:  # the gate's static stages, before any run is started (AST only)
            from cambrian.errors import GateError
            from cambrian.trainer.codecheck import check_code

            try:
                check_code(spec.delta.code, spec.component)
            except GateError as exc:
                st.failure_stage = exc.stage  # parse or static: the proposer gets it back once to repair
                return _fail(st, str(exc), exc.stage, actions, journal, move, cond)
        st.config_fingerprint = phi.fingerprint()
        st.baseline = ctx.baseline
        move("Validated")
        cond("Validated", True, "DeltaApplies", "the delta applies to the baseline and yields a valid config")
        journal("Validated", f"delta applies; config fingerprint {st.config_fingerprint}")
        if admit_first:
            return Result(actions, st, requeue_after=ADMITTED)

    if st.phase == "Validated":
        spent = spent_budget(meta, st, ctx)
        if spent:
            cond("Ready", False, "BudgetExhausted", f"budget {spent} is spent; not training")
            return Result(actions, st, requeue_after=POLL_SECONDS)
        if ctx.spec.fidelity is not None and st.first_look is None:
            look = ctx.spec.fidelity.wire_first_look()
            if F.is_full_training(ctx.baseline, spec.trainer_delta(), look):
                journal("FirstLookSkipped", f"its first look ({look['epochFraction']:g} of the epochs, "
                        f"{look['sampleFraction']:g} of the examples) would be its full training: trained in full")
                return _start_full(meta, spec, st, ctx, now, actions, journal, move, cond)
            _start_first_look(meta, spec, st, ctx, now, actions)
            move("Training")
            cond("Training", True, "FirstLook", f"first look as job {st.first_look.job}")  # type: ignore[union-attr]
            journal("FirstLookStarted", f"first look as job {st.first_look.job} "  # type: ignore[union-attr]
                    f"({st.first_look.epoch_fraction:g} of the epochs, {st.first_look.sample_fraction:g} of the "  # type: ignore[union-attr]
                    f"examples, one seed)")
            return Result(actions, st, requeue_after=POLL_SECONDS)
        return _start_full(meta, spec, st, ctx, now, actions, journal, move, cond)

    if st.phase == "Training" and st.first_look is not None and st.first_look.decision is None:
        return _first_look(meta, spec, st, ctx, jobs, now, actions, journal, move, cond)
    if st.phase == "Training" and st.attempts == 0:  # promoted; its full training waits for a budget
        return _start_full(meta, spec, st, ctx, now, actions, journal, move, cond)
    if st.phase == "Training" and st.confirmations:
        return _confirming(meta, spec, st, ctx, jobs, now, actions, journal, move, cond)
    if st.phase == "Training":
        return _training(meta, spec, st, ctx, _current(meta, st, jobs, ctx, now), now, actions, journal, move, cond)

    if st.phase == "Scored":
        if rollout is not None and meta.name in rollout.hypotheses and not rollout.concluded:
            st.rollout = rollout.name
            move("Live")
            cond("Live", True, "InRollout", f"serving in rollout {rollout.name}")
            journal("Live", f"serving as a treatment of rollout {rollout.name}")
        elif rollout is not None and rollout.concluded and rollout.name not in st.undecided_tests:
            # it concluded before this Hypothesis saw it live (a guardrail at the first readout, a human): the
            # same decision applies as to a Live one
            return _concluded(meta, st, ctx, rollout, actions, journal, move, cond)
        return Result(actions, st)

    if st.phase == "Live":
        if rollout is None:
            move("Retired", f"rollout {st.rollout} was deleted before it concluded")
            cond("Live", False, "RolloutDeleted", st.reason or "")
            journal("Retired", st.reason or "", warning=True)
        elif rollout.concluded:
            return _concluded(meta, st, ctx, rollout, actions, journal, move, cond)
    return Result(actions, st)


def _concluded(meta, st, ctx, rollout, actions, journal, move, cond) -> Result[HypothesisStatus]:
    """Its rollout concluded: Launched or Retired by the rollout's decision once the Evolution applied it, or, when
    that decision said nothing about it, back to Scored for another test (Retired, undecided, after
    spec.experiment.maxTests of them)."""
    promoted = rollout.phase == "Promoted" and rollout.winner_hypothesis == meta.name
    applied = rollout.applied is not None  # the Evolution marked it (and then forgets the name: evolution.py step 3)
    if ctx.decided is not None and rollout.name not in ctx.decided and not applied:  # launched, superseded or final
        cond("Live", True, AWAITING_LAUNCH if promoted else AWAITING_DECISION,
             f"{rollout.name} promoted it; its Evolution launches it next" if promoted else
             f"{rollout.name} concluded; its Evolution applies the decision next")
        return Result(actions, st, requeue_after=POLL_SECONDS)
    # its own arm's outcome, not the Rollout's: in an A/B/n test a harmful arm is a rollback even when the Rollout
    # ends inconclusive, and an arm still undecided (continue) when another was promoted decided nothing about it
    decision, reason = rollout.outcome_of(meta.name)
    superseded = rollout.name in ctx.superseded or rollout.applied == APPLIED_SUPERSEDED
    if superseded or decision == "continue":  # it decided nothing about it: again
        why = (f"rollout {rollout.name} was ended by its Evolution before it decided ({rollout.retired})"
               if rollout.retired else
               f"rollout {rollout.name} failed before it decided ({rollout.reason})" if rollout.phase == "Failed" else
               f"rollout {rollout.name} ({rollout.decision}) compared it with a model that is no longer the champion"
               if superseded else f"rollout {rollout.name} concluded ({rollout.decision}) before its test decided "
               f"about arm {rollout.arm_of(meta.name)}")
        st.undecided_tests = (st.undecided_tests + [rollout.name])[-MAX_TESTS:]
        st.rollout, st.online = None, None
        tests = len(st.undecided_tests)
        if tests >= ctx.spec.experiment.max_tests:  # bounded: a ranking that flips at every rollout cannot loop
            why += f"; {tests} online test(s) decided nothing (spec.experiment.maxTests {ctx.spec.experiment.max_tests})"
            move("Retired", why)
            cond("Live", False, UNDECIDED, why)
            journal("Retired", why, warning=True, rollout=rollout.name, decision=rollout.decision)
            return Result(actions, st)
        why += ": back to the online review, to be tested against the current champion"
        move("Scored", why)
        cond("Live", False, SUPERSEDED, why)
        journal("BackToReview", why, warning=promoted, rollout=rollout.name, decision=rollout.decision)
        return Result(actions, st)
    st.rollout = rollout.name
    st.online = OnlineResult(
        rollout=rollout.name,
        arm=rollout.arm_of(meta.name),
        decision=decision,  # type: ignore[arg-type]
        reason=reason,
        effects=list(rollout.effects_of(meta.name)),  # type: ignore[arg-type]
    )
    move("Launched" if promoted else "Retired", reason)
    cond("Live", False, "RolloutConcluded", f"{rollout.name}: {decision}")
    journal("Launched" if promoted else "Retired", f"rollout {rollout.name}: {decision}: {reason}")
    return Result(actions, st)


def _start_full(meta, spec, st, ctx, now, actions, journal, move, cond) -> Result[HypothesisStatus]:
    """The first full training run (attempt 1), from Validated or after a promoted first look."""
    spent = spent_budget(meta, st, ctx)
    if spent:
        cond("Ready", False, "BudgetExhausted", f"budget {spent} is spent; not training")
        return Result(actions, st, requeue_after=POLL_SECONDS)
    st.attempts += 1
    _start(meta, spec, st, ctx, actions)
    st.training_started_at = now
    move("Training")
    cond("Training", True, "JobCreated", f"attempt {st.attempts}: job {st.job_name}")
    journal("TrainingStarted", f"attempt {st.attempts} as job {st.job_name}")
    return Result(actions, st, requeue_after=POLL_SECONDS)


def _start_first_look(meta, spec, st, ctx, now, actions, run: int = 1) -> None:
    f = ctx.spec.fidelity
    st.first_look = FirstLookStatus(job=F.look_job_name(meta, run), runs=run, seed=N.base_seed(ctx.baseline),
                                    epoch_fraction=f.first_look.epoch_fraction,
                                    sample_fraction=f.first_look.sample_fraction)
    st.training_started_at = now
    actions.append(_look_job(meta, spec, st, ctx))


def _look_job(meta, spec, st, ctx) -> CreateTrainingJob:
    """The first look's run: the candidate (champion's Φ + delta) at the fractions its status records."""
    fl = st.first_look
    return CreateTrainingJob(
        name=fl.job, owner=owner_of(meta), hypothesis=meta.name, attempt=fl.runs, baseline=ctx.baseline,
        delta=spec.trainer_delta().model_dump(mode="json", exclude_none=True), training=ctx.spec.training.wire(),
        data=ctx.spec.data.wire(), storage_claim=ctx.spec.storage.claim_name,
        bundle_path=f"bundles/{meta.name}/first-look-{fl.runs}",
        fidelity={"epochFraction": fl.epoch_fraction, "sampleFraction": fl.sample_fraction},
        data_snapshot=data_snapshot(ctx.uid, ctx.spec.data.wire()))


def _first_look(meta, spec, st, ctx, jobs, now, actions, journal, move, cond) -> Result[HypothesisStatus]:
    """Wait for the first look, retry it after an infrastructure failure (like an attempt), then promote it to
    full training or stop it (fidelity.judge against the champion at the same fidelity)."""
    fl = st.first_look
    objective = ctx.spec.objective.offline.for_component(spec.component)
    if not fl.metrics:
        job = next((j for j in jobs if j.name == fl.job), None)
        if job is None:
            actions.append(_look_job(meta, spec, st, ctx))  # not visible (yet): the same name again, idempotent
            return Result(actions, st, requeue_after=POLL_SECONDS)
        if job.state in ("Pending", "Suspended", "Running"):
            note_blocker(st, "Training", f"job {job.name}: {job.blocked}" if job.blocked else None, now,
                         meta.generation, journal)
            return Result(actions, st, requeue_after=POLL_SECONDS)
        if job.started_at is not None and job.finished_at is not None:  # counted once: recorded or retried now
            st.gpu_hours += (job.finished_at - job.started_at).total_seconds() / 3600 * ctx.spec.training.gpu.count
        metrics = N.numeric(job.metrics)
        if job.state == "Succeeded" and metrics.get(objective.metric) is None:
            return _fail(st, f"first look {job.name} succeeded but reported no {objective.metric!r} metric", "metrics",
                         actions, journal, move, cond)
        if job.state != "Succeeded":
            why = f"first look {job.name} failed" + (f" ({job.reason})" if job.reason else "") + (
                f": {job.message}" if job.message else "")
            if job.exit_code in NO_RETRY_EXIT_CODES:  # the candidate itself is broken: as in a full run
                return _fail(st, why, job.stage or NO_RETRY_EXIT_CODES[job.exit_code], actions, journal, move, cond)
            if fl.runs >= ctx.spec.training.max_attempts:
                return _fail(st, f"{why} (after {fl.runs} runs)", job.stage or "training", actions, journal, move, cond)
            if runs_left(meta, st, ctx) == 0:
                return _budget_spent(st, why, actions, journal, move, cond)
            journal("Retrying", f"{why}; retrying (run {fl.runs + 1} of {ctx.spec.training.max_attempts})", warning=True)
            _start_first_look(meta, spec, st, ctx, now, actions, run=fl.runs + 1)
            return Result(actions, st, requeue_after=POLL_SECONDS)
        fl.metrics = metrics
    if ctx.spec.fidelity is None:
        return _promote(meta, spec, st, ctx, now, "spec.fidelity was removed: trained in full", actions, journal,
                        move, cond)
    now_f = ctx.spec.fidelity.first_look
    if (fl.epoch_fraction, fl.sample_fraction) != (now_f.epoch_fraction, now_f.sample_fraction):
        return _promote(meta, spec, st, ctx, now, "spec.fidelity.firstLook changed since this first look: the "
                        "reference is measured at the new fractions only; trained in full", actions, journal, move, cond)
    if not ctx.first_look_reference:
        if ctx.first_look_unavailable:
            return _promote(meta, spec, st, ctx, now, f"no first-look reference ({ctx.first_look_unavailable}): "
                            "trained in full", actions, journal, move, cond)
        cond("Training", True, WAITING_FOR_BASELINE, "first look trained; waiting for the champion's first-look "
                                                     "seeds to judge it")
        return Result(actions, st, requeue_after=POLL_SECONDS)
    jd = F.judge(objective, fl.metrics, ctx.first_look_reference, ctx.spec.noise, ctx.spec.fidelity.promote)
    if jd is None:
        return _promote(meta, spec, st, ctx, now, f"the champion's first look reported no {objective.metric}: "
                        "trained in full", actions, journal, move, cond)
    fl.gain, fl.noise_floor = jd.gain, jd.floor
    if jd.promoted:
        return _promote(meta, spec, st, ctx, now, jd.reason, actions, journal, move, cond)
    fl.decision, fl.reason = "stopped", jd.reason
    # judged in first-look units: persona yield (gain / floor, a loss counts 0) reads it like a full verdict
    st.gain, st.noise_floor, st.verdict = jd.gain, jd.floor, "not_better"
    move("Scored", jd.reason)
    cond("Training", False, "StoppedEarly", f"first look {fl.job} finished; not trained in full")
    cond("Ready", True, "StoppedEarly", jd.reason)
    journal("StoppedEarly", jd.reason, gain=jd.gain, floor=jd.floor)
    return Result(actions, st)


def _promote(meta, spec, st, ctx, now, why, actions, journal, move, cond) -> Result[HypothesisStatus]:
    st.first_look.decision, st.first_look.reason = "promoted", why
    journal("Promoted", why)
    return _start_full(meta, spec, st, ctx, now, actions, journal, move, cond)


def _start(meta: Meta, spec: HypothesisSpec, st: HypothesisStatus, ctx: EvolutionContext, actions: list) -> None:
    st.job_name = job_name(meta, st.attempts)
    actions.append(_create_job(meta, spec, st, ctx))


def _create_job(meta: Meta, spec: HypothesisSpec, st: HypothesisStatus, ctx: EvolutionContext,
                seed: int | None = None) -> CreateTrainingJob:
    """The latest attempt's run; with `seed`, the latest run of that confirmation seed."""
    return CreateTrainingJob(
        name=job_name(meta, st.attempts) if seed is None else confirm_job_name(meta, seed, _confirm_run(st, seed)),
        owner=owner_of(meta),
        hypothesis=meta.name,
        attempt=st.attempts if seed is None else 1,
        baseline=ctx.baseline if seed is None else N.with_seed(ctx.baseline, seed),
        delta=spec.trainer_delta().model_dump(mode="json", exclude_none=True),
        training=ctx.spec.training.wire(),
        data=ctx.spec.data.wire(),
        storage_claim=ctx.spec.storage.claim_name,
        bundle_path=bundle_path(meta, st.attempts) if seed is None else f"bundles/{meta.name}/seed-{seed}",
        data_snapshot=data_snapshot(ctx.uid, ctx.spec.data.wire()),
    )


def confirm_job_name(meta: Meta, seed: int, run: int = 1) -> str:
    return child_name(meta.name, meta.uid, f"seed-{seed}" if run == 1 else f"seed-{seed}-{run}")


def _confirm_run(st: HypothesisStatus, seed: int) -> int:
    return 1 + st.confirmation_retries.get(str(seed), 0)


def attempt_of(meta: Meta, name: str, max_attempts: int) -> int | None:
    for k in range(1, max_attempts + 1):
        if job_name(meta, k) == name:
            return k
    return None


def _current(meta, st, jobs, ctx, now) -> JobObservation | None:
    """The job of the latest attempt. A later attempt than the status knows means the status write
    after a retry was lost: adopt it instead of re-running the old attempt."""
    latest: tuple[int, JobObservation] | None = None
    for j in jobs:
        k = attempt_of(meta, j.name, max(ctx.spec.training.max_attempts, st.attempts))
        if k is not None and (latest is None or k > latest[0]):
            latest = (k, j)
    if latest is None:
        return None
    if latest[0] > st.attempts:
        st.attempts = latest[0]
        st.job_name = latest[1].name
        st.training_started_at = latest[1].started_at or now
    return latest[1] if latest[0] == st.attempts else None


def _training(meta, spec, st, ctx, job, now, actions, journal, move, cond) -> Result[HypothesisStatus]:
    expected = job_name(meta, st.attempts)
    if job is None or job.name != expected:
        # Not visible (yet, or deleted by hand): create it again under the same name; idempotent.
        actions.append(_create_job(meta, spec, st, ctx))
        st.job_name = expected
        return Result(actions, st, requeue_after=POLL_SECONDS)
    if job.state in ("Pending", "Suspended", "Running"):
        # The condition says the attempt's Job exists (or is queued: Suspended), as when it was created; its
        # Pod going from Pending to Running is the Job's own status. Written here, each would be one more
        # status write per Hypothesis (issue 16: requests per object).
        queued = job.state == "Suspended"
        cond("Training", True, "Suspended" if queued else "JobCreated",
             f"attempt {st.attempts}: job {job.name}" + (" is suspended (queued)" if queued else ""))
        note_blocker(st, "Training", f"job {job.name}: {job.blocked}" if job.blocked else None, now,
                     meta.generation, journal)
        return Result(actions, st, requeue_after=POLL_SECONDS)
    if st.seed_runs and st.seed_runs[0].job == job.name:
        return _judge(meta, spec, st, ctx, now, actions, journal, move, cond)  # recorded; waited for the baseline
    if job.started_at is not None and job.finished_at is not None:
        # counted once: the attempt is recorded (or moves to the next attempt) in this same step
        st.gpu_hours += (job.finished_at - job.started_at).total_seconds() / 3600 * ctx.spec.training.gpu.count
    if job.state == "Succeeded":
        objective = ctx.spec.objective.offline.for_component(spec.component)
        if N.numeric(job.metrics).get(objective.metric) is None:
            return _fail(st, f"job {job.name} succeeded but reported no {objective.metric!r} metric", "metrics",
                         actions, journal, move, cond)
        st.seed_runs = [N.seed_run(N.base_seed(ctx.baseline), job)]
        st.bundle_uri = job.bundle_uri  # the first seed's model is the one a rollout serves
        cond("Training", False, "Succeeded", f"job {job.name} finished")
        return _judge(meta, spec, st, ctx, now, actions, journal, move, cond)
    # Failed
    why = f"job {job.name} failed" + (f" ({job.reason})" if job.reason else "")
    if job.message:
        why += f": {job.message}"
    if job.exit_code in NO_RETRY_EXIT_CODES:
        st.failure_stage = job.stage or NO_RETRY_EXIT_CODES[job.exit_code]
        return _fail(st, why, st.failure_stage, actions, journal, move, cond)
    if st.attempts < ctx.spec.training.max_attempts and runs_left(meta, st, ctx) == 0:
        return _budget_spent(st, why, actions, journal, move, cond)
    if st.attempts < ctx.spec.training.max_attempts:
        journal("Retrying", f"{why}; retrying (attempt {st.attempts + 1} of {ctx.spec.training.max_attempts})",
                warning=True)
        st.attempts += 1  # the failed Job stays (for its logs) until its TTL; it marks the attempt as done
        _start(meta, spec, st, ctx, actions)
        st.training_started_at = now
        st.reason = why
        cond("Training", True, "Retrying", f"attempt {st.attempts}: job {st.job_name}")
        return Result(actions, st, requeue_after=POLL_SECONDS)
    st.failure_stage = job.stage or "training"
    return _fail(st, f"{why} (after {st.attempts} attempts)", st.failure_stage, actions, journal, move, cond)


def _judge(meta, spec, st, ctx, now, actions, journal, move, cond) -> Result[HypothesisStatus]:
    """Metrics over the finished seeds, the verdict against the champion; a promising first run gets its
    confirmation seeds (unless a budget is spent: then it stays promising, which is never rolled out)."""
    objective = ctx.spec.objective.offline.for_component(spec.component)
    if not ctx.reference:  # the baseline's seeds are still training: nothing to judge against yet
        cond("Training", True, WAITING_FOR_BASELINE, "trained; waiting for the baseline's noise floor to judge it")
        return Result(actions, st, requeue_after=POLL_SECONDS)
    st.proxy_metrics = N.proxy_metrics([r.metrics for r in st.seed_runs])
    st.offline_metric = objective.metric
    st.offline_score = st.proxy_metrics[objective.metric].value
    jd = N.verdict(objective, st.proxy_metrics, ctx.reference, ctx.spec.noise)
    st.gain, st.noise_floor, st.verdict = (jd.gain, jd.floor, jd.verdict) if jd else (None, None, None)  # type: ignore[assignment]
    why = jd.reason if jd else f"the champion reported no {objective.metric} to compare with; never rolled out"
    if jd is not None and jd.verdict == "promising" and not st.confirmations:
        go = (CF.Turn(False, f"budget {ctx.budget_exhausted} is spent", final=True) if ctx.budget_exhausted else
              CF.turn(meta.name, jd.gain / jd.floor if jd.floor else 0.0, ctx.spec.noise.confirm_seeds,
                      runs_left(meta, st, ctx), ctx.peers()))
        if not go.go and not go.final:
            st.reason = why
            cond("Training", True, CF.WAITING, f"{why}; {go.why}")
            return Result(actions, st, requeue_after=POLL_SECONDS)
        if go.go:
            seeds = confirmation_seeds(N.base_seed(ctx.baseline), ctx.spec.noise.confirm_seeds)
            st.confirmations = len(seeds)
            actions.extend(_create_job(meta, spec, st, ctx, seed=s) for s in seeds)
            st.reason = why
            cond("Training", True, "Confirming", f"{len(seeds)} confirmation seeds: {', '.join(map(str, seeds))}")
            journal("Confirming", f"{why}; training seeds {', '.join(map(str, seeds))}")
            return Result(actions, st, requeue_after=POLL_SECONDS)
        why += f"; not confirmed: {go.why}"
    value = st.offline_score
    move("Scored", why)
    cond("Ready", True, "Scored", f"{objective.metric}={value:.6g} ({st.verdict or 'not judged'})")
    journal("Scored", f"{objective.metric}={value:.6g}: {why}", metrics={k: v.value for k, v in st.proxy_metrics.items()},
            verdict=st.verdict)
    return Result(actions, st)


def _confirming(meta, spec, st, ctx, jobs, now, actions, journal, move, cond) -> Result[HypothesisStatus]:
    """Wait for every confirmation seed (creating any the platform does not show). A failed run is retried like
    an attempt (not for exit 2 or 3, up to spec.training.maxAttempts runs); a seed that still fails fails the
    hypothesis, as a candidate that only trains with some seeds is not an improvement."""
    by_name = {j.name: j for j in jobs}
    done = {r.job for r in st.seed_runs}
    waiting = 0
    for seed in confirmation_seeds(N.base_seed(ctx.baseline), st.confirmations):
        run = _confirm_run(st, seed)
        name = confirm_job_name(meta, seed, run)
        job = by_name.get(name)
        if name in done:
            continue
        if job is None:
            actions.append(_create_job(meta, spec, st, ctx, seed=seed))  # idempotent by name
            waiting += 1
            continue
        if job.state in ("Pending", "Suspended", "Running"):
            waiting += 1
            continue
        if job.started_at is not None and job.finished_at is not None:  # counted once: recorded or failed now
            st.gpu_hours += (job.finished_at - job.started_at).total_seconds() / 3600 * ctx.spec.training.gpu.count
        metric = ctx.spec.objective.offline.for_component(spec.component).metric
        if job.state == "Succeeded" and N.numeric(job.metrics).get(metric) is not None:
            st.seed_runs.append(N.seed_run(seed, job))
            continue
        why = f"confirmation seed {seed}: job {job.name} {job.state.lower()}" + (f": {job.message or job.reason}"
                                                                                  if job.message or job.reason else "")
        if job.state == "Failed" and job.exit_code not in NO_RETRY_EXIT_CODES and run < ctx.spec.training.max_attempts:
            if runs_left(meta, st, ctx) == 0:
                return _budget_spent(st, why, actions, journal, move, cond)
            st.confirmation_retries[str(seed)] = run
            actions.append(_create_job(meta, spec, st, ctx, seed=seed))
            journal("Retrying", f"{why}; retrying (run {run + 1} of {ctx.spec.training.max_attempts})", warning=True)
            waiting += 1
            continue
        return _fail(st, why, job.stage or "training", actions, journal, move, cond)
    if waiting:
        cond("Training", True, "Confirming", f"{waiting} of {st.confirmations} confirmation seeds still training")
        return Result(actions, st, requeue_after=POLL_SECONDS)
    return _judge(meta, spec, st, ctx, now, actions, journal, move, cond)


def _fail(st, why, stage, actions, journal, move, cond) -> Result[HypothesisStatus]:
    st.failure_stage = stage
    move("Failed", why)
    cond("Training", False, "Failed", why)
    cond("Ready", False, "Failed", why)
    journal("Failed", why, warning=True)
    return Result(actions, st)
