"""Evolution loop, pure: train the baseline (the first champion), wake the offline agent on its
cadence, start A/B rollouts for the best scored hypotheses up to top-K, apply rollout decisions
(a promoted treatment becomes the champion), and stop proposing when a budget is spent.

Schedules (nextWakeupAt, nextReviewAt) live in status; every created child has a name derived from
the evolution's uid and what it is for, so a replayed reconcile re-issues the same creates.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from datetime import datetime
from typing import Sequence

from cambrian.operator.api import (
    Champion,
    PersonaShare,
    ControlArm,
    EvolutionSpec,
    EvolutionStatus,
    LastDecision,
    LocalObjectRef,
    RolloutMetrics,
    RolloutSpec,
    Spend,
    TreatmentArm,
)
from cambrian.operator.reconcile.actions import (
    APPLIED_FINAL,
    APPLIED_SUPERSEDED,
    A_APPLIED,
    A_SPEND_COUNTED,
    Mark,
    CreateRollout,
    RetireRollout,
    Owner,
    ProposeHypotheses,
    RecordJournal,
)
from cambrian.operator.reconcile import champion as CH
from cambrian.operator.reconcile import confirmation as CF
from cambrian.operator.reconcile import fidelity as F
from cambrian.operator.reconcile import ledger as L
from cambrian.operator.reconcile import marks as M
from cambrian.operator.reconcile import noise as N
from cambrian.operator.reconcile import repair as R
from cambrian.operator.reconcile import scheduling as S
from cambrian.operator.reconcile import wakeups as W
from cambrian.operator.reconcile.common import (Meta, Result, after, blocked, child_name,
                                                resume_after_spec_change, set_condition)
from cambrian.operator.reconcile.observations import (ChampionObservation, HypothesisView, JobObservation,
                                                      RolloutView, TopK)
from cambrian.operator.reconcile.observations import Spend as SpendObservation
from cambrian.operator.reconcile.views import A_PREDICTED, unattributed
from cambrian.stats.reading import format_effect

POLL_SECONDS = 30.0
MAX_HANDLED = 256


def owner_of(meta: Meta) -> Owner:
    return Owner("Evolution", meta.name, meta.uid, meta.namespace)


def baseline_job_name(meta: Meta) -> str:
    return N.baseline_job_name(meta, 0)


def rollout_name(meta: Meta, hypothesis: str, test: int = 1) -> str:
    """The rollout of a hypothesis's `test`-th online test (a later one follows a test that decided nothing)."""
    return child_name(meta.name, meta.uid, f"ro-{hypothesis}" if test == 1 else f"ro-{hypothesis}-t{test}")


def exhausted_budget(spec: EvolutionSpec, spend: Spend) -> str | None:
    b = spec.agent.budgets
    for name, cap, used in (
        ("tokens", b.tokens, spend.tokens),
        ("dollars", b.dollars, spend.dollars),
        ("gpuHours", b.gpu_hours, spend.gpu_hours),
        ("evaluations", b.evaluations, spend.evaluations),
    ):
        if cap is not None and used >= cap:
            return name
    return None


def evolution_runs(spec: EvolutionSpec, status: EvolutionStatus) -> int:
    """Training runs the Evolution itself starts, counted against the evaluations budget: its baseline's seeds and
    its champions' first-look references."""
    return spec.noise.baseline_seeds + F.evaluations(spec, status)


def effective_baseline(spec: EvolutionSpec, status: EvolutionStatus) -> dict:
    """Deltas apply to the champion's Φ once one was launched (the paper's step 9)."""
    return status.champion.config if status.champion.config is not None else spec.baseline


def wakeup_schedule(spec: EvolutionSpec, spend: Spend, hypotheses: Sequence[HypothesisView], wakeup: int) -> S.Schedule:
    """The wake-up's proposals per persona (scheduling.py). With `yield`, no more are asked for than the
    evaluations budget has runs left for, keeping the confirmation seeds of the strongest promising one
    (confirmation.reserve): a proposal that can never be trained, or never confirmed, costs tokens and tells
    nothing."""
    a = spec.agent
    budget = len(a.personas) * a.proposals_per_wakeup
    if a.scheduling.policy == "yield" and a.budgets.evaluations is not None:
        budget = CF.reserve(spec.noise.confirm_seeds, a.budgets.evaluations - spend.evaluations, budget)
    q = a.quotas
    return S.schedule(a.scheduling.policy, a.personas, a.proposals_per_wakeup,
                      {"explore": q.explore, "exploit": q.exploit, "innovate": q.innovate}, hypotheses,
                      floor=a.scheduling.exploration_floor, budget=budget, wakeup=wakeup)


def _preemptible(spec: EvolutionSpec, rollout: RolloutView, now: datetime) -> bool:
    """May a re-ranking end this live Rollout? Only after spec.experiment.preemptAfter of its ramp (never without
    it): ending a test that has not decided wastes the users it had and sends its hypothesis back undecided,
    while its own sequential analysis (futility included) already stops it when it cannot win. One not started
    yet has had no users."""
    if rollout.started_at is None:
        return True
    wait = spec.experiment.preempt_after
    return wait is not None and now >= after(rollout.started_at, wait)


def rank(spec: EvolutionSpec, candidates: Sequence[HypothesisView]) -> list[HypothesisView]:
    """Deterministic stand-in for the online agent: best first within each component (by that
    component's offline metric and direction), then interleaved across components, because scores
    of different components are not comparable (a reward change changes the loss)."""
    per: dict[str, list[HypothesisView]] = {}
    for h in candidates:
        if h.offline_score is None:
            continue
        per.setdefault(h.component, []).append(h)
    for comp, hs in per.items():
        sign = 1.0 if spec.objective.offline.for_component(comp).direction == "minimize" else -1.0
        hs.sort(key=lambda h: (sign * h.offline_score, h.created, h.name))  # type: ignore[operator]
    order = sorted(per, key=lambda c: ("optimizer", "architecture", "reward", "training").index(c))
    out: list[HypothesisView] = []
    while any(per[c] for c in order):
        for c in order:
            if per[c]:
                out.append(per[c].pop(0))
    return out


def reconcile(
    meta: Meta,
    spec: EvolutionSpec,
    status: EvolutionStatus,
    hypotheses: Sequence[HypothesisView],
    rollouts: Sequence[RolloutView],
    baseline_job: Sequence[JobObservation] | JobObservation | None,
    spend: SpendObservation,
    now: datetime,
    top_k: TopK | None = None,
    champion_serving: ChampionObservation | None = None,
) -> Result[EvolutionStatus]:
    """`baseline_job`: the baseline's training runs (one per seed; see noise.measure_baseline), and with
    spec.fidelity the current champion's first-look runs (fidelity.measure_reference).
    `top_k`: the Online Agent's selection (cluster mode); None falls back to the deterministic `rank`.
    `champion_serving`: the production model server as the platform reports it (None: there is none)."""
    if blocked(status, meta.generation):
        return Result([], status.model_copy(deep=True))
    st = status.model_copy(deep=True)
    if st.observed_generation is not None and st.observed_generation != meta.generation:
        W.restart_backoff(st, now)  # the spec changed (a new provider, say): ask again now
    resumed = resume_after_spec_change(st, meta.generation, "Running", now)
    st.observed_generation = meta.generation
    owner = owner_of(meta)
    actions: list = []

    def journal(event: str, message: str, warning: bool = False, **data) -> None:
        actions.append(RecordJournal(owner, event, message, data, warning))

    def cond(type_: str, ok: bool | str, reason: str, message: str = "") -> None:
        st.conditions = set_condition(st.conditions, type_, ok, reason, message, now, meta.generation)

    if resumed:
        journal("Resumed", resumed)
    if st.phase is None:
        st.phase = "Running"
        journal("Started", f"top-K {spec.top_k}, agent {spec.agent.provider}")
    if st.phase == "Failed":
        return Result(actions, st)

    # 1. The first champion is the baseline, trained with several seeds: their spread is the noise floor.
    jobs = [baseline_job] if isinstance(baseline_job, JobObservation) else list(baseline_job or ())
    if st.champion.bundle is None:
        if not N.measure_baseline(meta, spec, st, jobs, owner, now, actions, journal, cond):
            return Result(actions, st)
    # 1b. spec.fidelity: the champion at first-look fidelity (in parallel with the baseline's own seeds), once
    # per champion; a launch below is measured at the next reconcile.
    F.measure_reference(meta, spec, st, effective_baseline(spec, st), jobs, owner, now, actions, journal, cond)

    # 2. Spend and budgets. `spend` is what the objects that exist now show; the ledger adds what deleted Hypotheses
    # spent (ledger.py), so deleting finished ones gives no budget back.
    seen = [L.seen(h) for h in hypotheses]
    st.spend_ledger, total, marks = L.update(meta.uid, status.spend_ledger, seen)
    actions.extend(Mark("Hypothesis", name, owner, A_SPEND_COUNTED, value) for name, value in marks)
    spend = L.plus(spend, L.carried(total, seen))
    st.spend = Spend(tokens=spend.tokens, dollars=spend.dollars, gpu_hours=spend.gpu_hours, evaluations=spend.evaluations)
    spent = exhausted_budget(spec, st.spend)
    if spent and st.phase != "BudgetExhausted":
        st.phase = "BudgetExhausted"
        st.reason = f"budget {spent} is spent; no new proposals or training"
        journal("BudgetExhausted", st.reason, warning=True)
    elif not spent and st.phase == "BudgetExhausted":
        st.phase = "Running"
        st.reason = None
    cond("BudgetAvailable", not spent, "Spent" if spent else "Available", st.reason or "")

    # 3. Decisions of concluded rollouts, applied once each. A promotion says its winner beat the rollout's control;
    # it is launched only while that control is still the champion. Rollouts concluded together apply the largest
    # north-star effect first, so of two winners against one champion the better one is launched and the other,
    # never compared with it, is not: superseded, its Hypothesis goes back to the review, to be tested against the
    # new champion. So does the treatment of a rollout its Evolution ended before it decided (a launch replaced its
    # control, or the online agent ranked others above it): that ending says nothing against it.
    # What was applied is remembered in two steps (marks.py): the names in status (handledDecisions, superseded)
    # until the next reconcile marks each Rollout, then the mark. So a Rollout applied long ago is never applied
    # again (before, with more than 256 concluded ones, the oldest fell off the list and were applied again at
    # every reconcile). The same for the repairs asked.
    _acknowledge(owner, status, st, rollouts, actions)
    repair_marks, st.repairs = R.acknowledge(owner, status.repairs, st.repairs, hypotheses, status.counters.wakeups)
    actions.extend(repair_marks)
    mine = {h.name for h in hypotheses}
    by_name = {h.name: h for h in hypotheses}
    north_star = spec.objective.north_star[0].name
    better = 1 if spec.objective.north_star[0].direction == "maximize" else -1
    launched_now: RolloutView | None = None
    # promotions concluded together: the best reading on the north star, in its own direction, is launched first
    for ro in sorted((r for r in rollouts if r.concluded and r.applied is None and r.name not in st.handled_decisions),
                     key=lambda r: (-_promoted_effect(r, north_star, better), r.name)):
        st.last_decision = LastDecision(rollout=ro.name, outcome=ro.decision or "inconclusive",  # type: ignore[arg-type]
                                        winner=ro.winner_hypothesis, reason=ro.reason or "", time=now)
        if ro.phase == "Promoted" and ro.winner_hypothesis and ro.winner_bundle:
            if ro.control_bundle is not None and ro.control_bundle != st.champion.bundle:
                why = (f"{ro.winner_hypothesis} beat its control ({ro.control_bundle}) in rollout {ro.name}, but the "
                       f"champion is now {st.champion.name} (launched by {st.champion.rollout or 'its Evolution'}), "
                       f"which it was never compared with: not launched")
                st.superseded = (st.superseded + [ro.name])[-MAX_HANDLED:]
                journal("PromotionSuperseded", why, warning=True, rollout=ro.name)
            else:
                winner = by_name.get(ro.winner_hypothesis)
                new_config = trained_config(effective_baseline(spec, st), winner)
                st.champion = Champion(name=ro.winner_hypothesis, hypothesis=ro.winner_hypothesis,
                                       bundle=ro.winner_bundle, rollout=ro.name, config=new_config, since=now,
                                       proxy_metrics=dict((winner.proxy_metrics if winner else None) or {}))
                journal("ChampionChanged", f"{ro.winner_hypothesis} launched by rollout {ro.name}"
                                           f"{_reading_words(ro, north_star)}")
                launched_now = ro
        elif ro.retired or ro.phase == "Failed":
            # ended undecided: by its Evolution (step 3a, or the online agent's re-ranking in step 5), or it could not
            # run (a PromQL its Prometheus refused, a child the platform refuses): its hypotheses are tested again,
            # up to spec.experiment.maxTests times, never retired untested
            st.superseded = (st.superseded + [ro.name])[-MAX_HANDLED:]
        st.handled_decisions = (st.handled_decisions + [ro.name])[-MAX_HANDLED:]
    # 3a. A launch ends the live rollouts still measuring against the champion it replaced: their control arms keep
    # users on a model that is no longer production, and a promotion there would be superseded. Superseded too,
    # unless a readout due at once decides them first (rollout.py; step 3 then applies that decision): their
    # hypotheses are tested again against the new champion.
    stale: set[str] = set()
    if launched_now is not None:
        for ro in sorted(rollouts, key=lambda r: r.name):
            if ro.concluded or ro.control_bundle is None or ro.control_bundle == st.champion.bundle:
                continue
            why = (f"its control is no longer the champion: {st.champion.name} was launched by rollout "
                   f"{launched_now.name}")
            actions.append(RetireRollout(ro.name, owner, why))
            journal("RolloutRetired", f"rollout {ro.name} ended: {why}; its hypotheses go back to the review")
            stale.add(ro.name)

    # 3b. Production serves the champion (a new one is rolled out by the platform). Once it does, and the route
    # (if any) is on it, concluded Rollouts release the arms and router entries they kept (the cluster's stayed
    # until the Rollout was deleted).
    actions.extend(CH.serve(owner, spec, st, champion_serving, now, meta.generation, journal))
    actions.extend(CH.release(owner, spec, st, champion_serving, rollouts))

    # 4. Offline agent wake-ups, backed off while they create nothing (wakeups.py). A wake-up's outcome is
    # read once its cadence has passed: by then its Hypotheses exist wherever the platform keeps them.
    if st.last_wakeup_at is not None and now >= after(st.last_wakeup_at, spec.cadence.offline):
        streak = W.empty_streak(hypotheses, st.counters.wakeups, st.backoff_counts_after)
        if streak and streak != st.counters.empty_wakeups:
            journal("WakeupsBackedOff", f"the last {streak} wake-up(s) created no Hypothesis (see their events); "
                    f"the next waits {W.factor(streak)} × {spec.cadence.offline}", warning=True, streak=streak)
        st.counters.empty_wakeups = streak
        st.next_wakeup_at = W.next_due(st.last_wakeup_at, spec.cadence.offline, streak)
        cond("Proposing", streak == 0, "NothingProposed" if streak else "Proposed",
             f"the last {streak} wake-up(s) created no Hypothesis" if streak else "")
    if st.phase == "Running" and (st.next_wakeup_at is None or now >= st.next_wakeup_at):
        wakeup = st.counters.wakeups + 1
        q = spec.agent.quotas
        repairs = R.to_repair(hypotheses, st.repairs)  # failed proposals go back to the proposer once
        st.repairs = R.remember(st.repairs, repairs)
        plan = wakeup_schedule(spec, st.spend, hypotheses, wakeup)
        st.persona_schedule = [PersonaShare(persona=s.persona, proposals=s.proposals, yield_per_evaluation=s.yield_,
                                            evaluations=s.evaluations) for s in plan.shares]
        journal("PersonasScheduled", f"wake-up {wakeup}: {S.summary(plan)}", policy=plan.policy,
                allocation={s.persona: s.proposals for s in plan.shares})
        actions.append(
            ProposeHypotheses(
                owner=owner,
                wakeup=wakeup,
                name_prefix=child_name(meta.name, meta.uid, f"w{wakeup}", max_len=56),
                quotas=(("explore", q.explore), ("exploit", q.exploit), ("innovate", q.innovate)),
                personas=tuple(spec.agent.personas),
                evolution_spec=spec.wire(),
                baseline=effective_baseline(spec, st),
                repairs=repairs,
                allocation=plan.allocation(),
                order=plan.order(),
                tokens_spent=st.spend.tokens,
                dollars_spent=st.spend.dollars,
                charged_through=unattributed(meta.annotations)["through"],
            )
        )
        st.counters.wakeups = wakeup
        st.last_wakeup_at = now
        st.next_wakeup_at = after(now, spec.cadence.offline)

    # 5. Online review: start rollouts for the best scored hypotheses, up to top-K live.
    live = [r for r in rollouts if not r.concluded and r.name not in stale]
    if st.champion.bundle and st.phase != "Failed" and (st.next_review_at is None or now >= st.next_review_at):
        st.counters.reviews += 1
        st.next_review_at = after(now, spec.cadence.online)
        # a hypothesis is tested once, again only when every test it had decided nothing about it (its own
        # status.undecidedTests, kept by the Hypothesis when it went back to Scored)
        tested: defaultdict[str, set[str]] = defaultdict(set)  # hypothesis -> its rollouts
        for r in rollouts:
            for name in r.hypotheses:
                tested[name].add(r.name)
        pool = [h for h in hypotheses if h.phase == "Scored" and N.may_roll_out(h.verdict) and h.bundle_uri
                and tested[h.name] <= set(h.undecided_tests)]
        if top_k is not None:
            dropped = set(top_k.retire)
            retire = [r for r in sorted(live, key=lambda r: r.name)
                      if r.hypotheses and all(h in dropped for h in r.hypotheses) and _preemptible(spec, r, now)]
            for ro in retire:
                actions.append(RetireRollout(ro.name, owner, f"{', '.join(ro.hypotheses)} left the top {spec.top_k}"))
                journal("RolloutRetired", f"{', '.join(ro.hypotheses)} dropped out of the top {spec.top_k} "
                        f"(ranked by {top_k.ranked_by}); rollout {ro.name} ended")
            live = [r for r in live if r not in retire]
            by_pool = {h.name: h for h in pool}
            chosen = [by_pool[n] for n in top_k.start if n in by_pool]
            if top_k.note:
                journal("OnlineAgent", top_k.note, warning=True)
        else:
            chosen = rank(spec, pool)
        chosen = CH.gate_rollouts(st, chosen, lambda h: h.bundle_uri, now, meta.generation, journal)
        free = spec.top_k - len(live)
        for h in chosen[: max(0, free)]:
            name = rollout_name(meta, h.name, len(tested[h.name]) + 1)
            annotations, guess = (), ""
            predicted = top_k.predicted(h.name) if top_k is not None else None
            if predicted is not None:  # the surrogate ranked it: what it expects travels with the rollout
                mean, sd = predicted
                prediction = {"hypothesis": h.name, "mean": mean, "sd": sd, "by": top_k.ranked_by}
                annotations = ((A_PREDICTED, json.dumps(prediction)),)
                guess = f"; {top_k.ranked_by} predicts {mean:+.4f} ± {sd:.4f}"
            actions.append(CreateRollout(name, owner, _rollout_spec(meta, spec, st, h, name).wire(), h.name, annotations))
            score = f"{h.offline_score:.6g}" if h.offline_score is not None else "?"
            journal("RolloutStarted", f"{h.name} ({h.offline_metric}={score}) in rollout {name}{guess}")
            live.append(RolloutView(name=name, phase=None, hypotheses=(h.name,)))

    # 6. Counters, conditions.
    phases = [h.phase for h in hypotheses]
    c = st.counters
    c.proposed = len(mine)
    c.trained = sum(p in ("Scored", "Live", "Launched", "Retired") for p in phases)
    c.failed = phases.count("Failed")
    c.rejected = phases.count("Rejected")
    c.launched = phases.count("Launched")
    c.live = len(live)
    st.live_rollouts = sorted(r.name for r in live)
    actions.extend(CH.route(owner, spec, st, champion_serving, st.live_rollouts, journal))
    cond("Ready", st.phase == "Running", st.phase or "", st.reason or "")
    times = [t for t in (st.next_wakeup_at, st.next_review_at) if t is not None]
    wait = min(((t - now).total_seconds() for t in times), default=POLL_SECONDS)
    return Result(actions, st, requeue_after=max(1.0, min(wait, POLL_SECONDS if st.champion.bundle is None else wait)))


def _acknowledge(owner: Owner, persisted: EvolutionStatus, st: EvolutionStatus, rollouts: Sequence[RolloutView],
                 actions: list) -> None:
    """Mark the Rollouts whose decision the persisted status says was applied; forget those already marked."""
    seen = {r.name: r.applied for r in rollouts if r.concluded}
    for name in M.to_mark(persisted.handled_decisions, seen):
        outcome = APPLIED_SUPERSEDED if name in persisted.superseded else APPLIED_FINAL
        actions.append(Mark("Rollout", name, owner, A_APPLIED, outcome))
    st.handled_decisions = M.forget_marked(st.handled_decisions, seen)
    st.superseded = M.forget_marked(st.superseded, seen)


def _north_star_reading(ro: RolloutView, north_star: str) -> dict | None:
    """The winner's effect on the north star as the Rollout's status reports it (None: not reported)."""
    found = [e for e in ro.effects_of(ro.winner_hypothesis) if e.get("metric") == north_star]
    est = found[0].get("estimate") if found else None
    return found[0] if isinstance(est, (int, float)) and math.isfinite(est) else None


def _promoted_effect(ro: RolloutView, north_star: str, better: int) -> float:
    """The promoted winner's estimated gain on the north star, its effect times `better` (1: maximize, -1:
    minimize); -inf: not a promotion, or not reported."""
    e = _north_star_reading(ro, north_star) if ro.phase == "Promoted" else None
    return better * float(e["estimate"]) if e else -math.inf


def _reading_words(ro: RolloutView, north_star: str) -> str:
    """' (dau read +7.1%; its design was sized for +5.4%)' for a launch's journal entry: a reading near the planned
    effect overstates the change (README, What a launch's reading means); '' when the Rollout reported none."""
    e = _north_star_reading(ro, north_star)
    if e is None:
        return ""
    relative = bool(e.get("relative"))
    planned = e.get("plannedEffect")
    sized = f"; its design was sized for {format_effect(planned, relative)}" if isinstance(planned, (int, float)) else ""
    return f" ({north_star} read {format_effect(e['estimate'], relative)}{sized})"


def trained_config(champion: dict, hyp: HypothesisView | None) -> dict:
    """The Φ a launched hypothesis's bundle was trained with: the champion's Φ it was validated against (its
    status.baseline; the current `champion` for a status from before it was kept) with its delta. A hypothesis
    validated against an earlier champion can still win a rollout against today's: what is launched, and what
    the next proposals apply to, is the model that won."""
    base = hyp.baseline if hyp is not None and hyp.baseline is not None else champion
    return _apply(base, hyp)


def _apply(baseline: dict, hyp: HypothesisView | None) -> dict:
    if hyp is None or hyp.delta is None:
        return baseline
    from cambrian.trainer.config import parse_config
    from cambrian.trainer.delta import apply_delta, parse_delta

    return apply_delta(parse_config(baseline), parse_delta(hyp.delta)).model_dump(mode="json")


def _rollout_spec(meta: Meta, spec: EvolutionSpec, st: EvolutionStatus, h: HypothesisView, name: str) -> RolloutSpec:
    tpl = spec.experiment
    return RolloutSpec(
        evolution_ref=LocalObjectRef(name=meta.name),
        control=ControlArm(name="control", bundle=st.champion.bundle or "",
                           hypothesis_ref=LocalObjectRef(name=st.champion.hypothesis) if st.champion.hypothesis else None),
        treatments=[TreatmentArm(name="treatment", hypothesis_ref=LocalObjectRef(name=h.name), bundle=h.bundle_uri or "")],
        salt=name,
        ramp=tpl.ramp,
        metrics=RolloutMetrics(north_star=spec.objective.north_star, guardrails=spec.guardrails, readout=tpl.readout,
                               promql=spec.objective.promql),
        statistics=tpl.statistics,
        decision_policy=spec.launch_policy,
    )
