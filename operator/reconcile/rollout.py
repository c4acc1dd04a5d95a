"""Rollout lifecycle, pure: Pending -> Deploying -> Running (ramp steps, readouts)
-> Promoted | RolledBack | Inconclusive, with AwaitingApproval when a human must confirm a promotion.

Clocks are durable: startedAt, stepStartedAt and nextReadoutAt live in status, so a restarted
operator resumes the experiment where it was. A readout without an analysis (Prometheus down)
decides nothing and never promotes; it is retried on the next interval. Rollbacks (guardrail
breach, sample-ratio mismatch, a significantly worse treatment) apply even under a manual policy:
safety is enforced here, not left to the agent or a human. In an A/B/n Rollout a treatment decided early (harmful
or futile) while the others go on is stopped alone (_stop_decided_arms): it keeps its weight and its users their
assignment, but the router serves them control's model, and its Deployment goes once the router no longer calls it.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime, timedelta

from cambrian.operator.api import (
    SRM,
    ArmEffect,
    ArmStatus,
    GuardrailReading,
    RolloutSpec,
    RolloutStatus,
    Serving,
    duration_seconds,
)
from cambrian.operator.reconcile.actions import (
    A_APPROVE,
    ArmWeight,
    ClearWeights,
    DeleteArm,
    DeployArm,
    Mark,
    Owner,
    RecordJournal,
    SetWeights,
)
from cambrian.operator.reconcile import httproute as HR
from cambrian.operator.reconcile.champion import first_unservable
from cambrian.operator.reconcile.common import (INVALID_SPEC, Meta, Result, after, blocked, child_name,
                                                fail_until_spec_changes, note_blocker, resume_after_spec_change,
                                                set_condition)
from cambrian.operator.reconcile.observations import RolloutObservation, RouteObservation

CONCLUDED = ("Promoted", "RolledBack", "Inconclusive", "Failed")
APPROVALS = ("promote", "rollback")  # the values annotation cambrian.dev/approve accepts
POLL_SECONDS = 15.0
METRICS_RETRY_SECONDS = 300.0
REASON_MAX = 2048  # status.arms[].reason's maxLength
# A stopped arm's Deployment goes this long after its stop at the earliest (and once the router config observed
# redirects it): a cluster's router reads its ConfigMap from a volume the kubelet refreshes within about a minute
REDIRECT_GRACE_SECONDS = 120.0


def owner_of(meta: Meta) -> Owner:
    return Owner("Rollout", meta.name, meta.uid, meta.namespace)


def arm_name(meta: Meta, arm: str) -> str:
    """Deployment and Service name of an arm."""
    return child_name(meta.name, meta.uid, f"arm-{arm}")


def router_name(owner: Owner) -> str:
    """Deployment, Service and ConfigMap name of a rollout's router (its users' only way in: sticky, logged)."""
    return child_name(owner.name, owner.uid, "router")


def readout_due(status: RolloutStatus, now: datetime) -> bool:
    """Should the adapter query Prometheus and run the analysis before calling reconcile?"""
    return (
        status.phase in ("Running", "AwaitingApproval")
        and status.next_readout_at is not None
        and now >= status.next_readout_at
    )


def desired_weights(spec: RolloutSpec, status: RolloutStatus) -> dict[str, int]:
    """Percent per arm; every arm is listed (0 = no traffic) so the router config stays complete. A stopped arm
    keeps its step's weight (its users keep their assignment; stopped_arms: what serves them)."""
    names = spec.arm_names()
    if status.phase in ("Running", "AwaitingApproval"):
        return dict(zip(names, spec.ramp.steps[status.step].weights))
    target = status.winner if status.phase == "Promoted" and status.winner else spec.control.name
    return {n: (100 if n == target else 0) for n in names}


def stopped_arms(status: RolloutStatus) -> list[str]:
    """A/B/n treatments stopped early (_stop_decided_arms): the router serves their users control's model. Their
    weight stays, so no user is assigned anew (same router phase: no window restarts, no re-randomisation) and the
    stopped treatment's lasting effect on its users never lands in control's or another arm's mean."""
    return [a.name for a in status.arms if a.stopped_at is not None]


def _summary(weights: dict[str, int]) -> str:
    return ",".join(f"{k}={v}" for k, v in weights.items())


def weights_phase(status: RolloutStatus) -> int:
    """The router's phase for the weights `desired_weights` gives, one more at each change of them: 0 before
    the ramp starts (all on control), step + 1 while the test runs, step + 2 once concluded (the launch or
    rollback moves users again). The router advances its phase at every weight change on its own; naming the
    same number here keeps a restarted router (which reads it from its config) where it was. Stopping an A/B/n
    arm changes no weight: it is no phase of its own."""
    if status.phase in ("Running", "AwaitingApproval"):
        return status.step + 1
    return status.step + 2 if status.phase in CONCLUDED else 0


def _services(meta: Meta, spec: RolloutSpec, stopped: Collection[str]) -> dict[str, str]:
    """Arm -> the Service the router sends its users to: its own, control's for a stopped arm."""
    return {arm: arm_name(meta, spec.control.name if arm in stopped else arm) for arm in spec.arm_names()}


def _set_weights(meta: Meta, spec: RolloutSpec, weights: dict[str, int], serving: Serving, phase: int,
                 route: RouteObservation | None = None, router_ready: bool = False, live: bool = True,
                 stopped: Collection[str] = ()) -> SetWeights:
    """The router's weights and each arm's Service (control's for a stopped arm), and spec.serving.httpRoute's
    backends (the router) when this rollout may write the route (httproute.py)."""
    owner = owner_of(meta)
    services = _services(meta, spec, stopped)
    want = HR.holder_backends(router_name(owner), router_ready, route, serving.wire())
    return SetWeights(
        owner,
        meta.name,
        spec.salt,
        tuple(ArmWeight(arm, services[arm], w) for arm, w in weights.items()),
        serving.wire(),
        phase,
        HR.rollout_write(meta.name, route, want, live),
        want,
    )


def reconcile(
    meta: Meta,
    spec: RolloutSpec,
    status: RolloutStatus,
    serving: Serving,
    storage_claim: str | None,
    obs: RolloutObservation,
    now: datetime,
) -> Result[RolloutStatus]:
    if blocked(status, meta.generation):
        return Result([], status.model_copy(deep=True))
    st = status.model_copy(deep=True)
    resumed = resume_after_spec_change(st, meta.generation, "Pending" if st.started_at is None else "Running", now)
    # spec.ramp.steps may be edited while it runs: a ramp shortened below status.step goes on at its new last step
    # (before, every index of the ramp by status.step raised IndexError at every reconcile)
    shortened = st.phase not in CONCLUDED and st.step >= len(spec.ramp.steps)
    if shortened:
        was, st.step = st.step, len(spec.ramp.steps) - 1
    st.observed_generation = meta.generation
    owner = owner_of(meta)
    actions: list = []
    names = spec.arm_names()
    bundles = {spec.control.name: spec.control.bundle, **{t.name: t.bundle for t in spec.treatments}}
    unloadable = first_unservable(bundles.values())
    if unloadable and st.phase not in CONCLUDED:  # no arm could ever become ready: say so, start nothing
        return fail_until_spec_changes(meta, "Rollout", status, INVALID_SPEC, unloadable, now)
    if obs.refused and st.phase in (None, "Pending", "Deploying"):  # a metric no readout could ever read
        return fail_until_spec_changes(meta, "Rollout", status, INVALID_SPEC, obs.refused, now)

    def cond(type_: str, ok: bool | str, reason: str, message: str = "") -> None:
        st.conditions = set_condition(st.conditions, type_, ok, reason, message, now, meta.generation)

    def journal(event: str, message: str, warning: bool = False, **data) -> None:
        actions.append(RecordJournal(owner, event, message, data, warning))

    def arms_blocked(which: list[str]) -> str | None:
        why = [f"arm {a}: {obs.arms[a].blocked}" for a in which if obs.arms.get(a) and obs.arms[a].blocked]
        return "; ".join(why) if why else None

    def ensure_arms(which: list[str]) -> bool:
        ready = True
        for arm in which:
            seen = obs.arms.get(arm)
            if seen is None or not seen.exists:
                actions.append(
                    DeployArm(arm_name(meta, arm), owner, meta.name, arm, bundles[arm], serving.wire(), storage_claim)
                )
            ready = ready and seen is not None and seen.ready
        return ready

    def redirected() -> bool:
        """The router, as observed, serves every stopped arm from control's Service (obs.services None: taken to
        serve each arm from its own)."""
        routes = _services(meta, spec, ())
        return all((obs.services or routes).get(a) == routes[spec.control.name] for a in stopped_arms(st))

    def release_stopped() -> None:
        """A stopped arm's Deployment goes once the router observed serves its users from control's Service (never
        before: they would get errors) and the router surely read that config (REDIRECT_GRACE_SECONDS)."""
        if obs.services is None or not redirected():
            return
        for a in st.arms:
            seen = obs.arms.get(a.name)
            if (a.stopped_at is not None and seen is not None and seen.exists
                    and now >= a.stopped_at + timedelta(seconds=REDIRECT_GRACE_SECONDS)):
                actions.append(DeleteArm(arm_name(meta, a.name), owner, meta.name, a.name))

    def sync_weights() -> None:
        want = desired_weights(spec, st)
        sw = _set_weights(meta, spec, want, serving, weights_phase(st), obs.route, obs.router_ready,
                          st.phase not in CONCLUDED, stopped_arms(st))
        if (obs.weights != want or sw.route_version is not None
                or (st.phase in ("Running", "AwaitingApproval") and not redirected())):
            actions.append(sw)
        if obs.route is not None:
            note_route(sw.route_version is not None or obs.route.holder == meta.name)
        st.weights_summary = _summary(want)
        st.arms = [_arm(st, n).model_copy(update={"weight": want.get(n, 0),
                                                  "ready": bool(obs.arms.get(n) and obs.arms[n].ready)})
                   for n in names]

    route = f"HTTPRoute {serving.http_route.name if serving.http_route else ''}"

    def note_route(holds: bool) -> None:
        """RouteHeld: whether spec.serving.httpRoute is held for this rollout (its router; httproute.py)."""
        other = HR.held_by_another(meta.name, obs.route)
        if holds and st.phase in CONCLUDED:
            cond(HR.HELD, True, "Held", f"{route} keeps this rollout's router (at its final weights) until its "
                                        "Evolution points it back at the champion")
        elif holds and not obs.router_ready:
            cond(HR.HELD, True, "Held", f"{route} is held for this rollout: its traffic goes to the rollout's router "
                                        "once that has a ready pod")
        elif holds:
            cond(HR.HELD, True, "Held", f"{route} sends its traffic to this rollout's router, which keeps each user "
                                        "on one arm at the ramp's weights")
        elif st.phase in CONCLUDED and any(c.type == HR.HELD for c in st.conditions):  # it held or waited: over
            cond(HR.HELD, False, "Released", f"{route} does not carry this rollout's router: it concluded")
        elif other:  # it started before the route was held: its users come through its router alone
            cond(HR.HELD, False, "HeldByAnother", f"{route} carries rollout {other}'s router")

    def wake() -> float:
        """The next step: its readout or ramp, sooner while the route this rollout holds waits for its router."""
        follows = obs.route is not None and not obs.router_ready and not HR.held_by_another(meta.name, obs.route)
        return min(_until(st, spec, now), POLL_SECONDS) if follows else _until(st, spec, now)

    def finish() -> Result[RolloutStatus]:
        if obs.released:
            return release()
        sync_weights()
        keep = [spec.control.name] + ([st.winner] if st.phase == "Promoted" and st.winner else [])
        for arm in names:
            seen = obs.arms.get(arm)
            if arm not in keep and seen is not None and seen.exists:
                actions.append(DeleteArm(arm_name(meta, arm), owner, meta.name, arm))
        # An arm removed here is not ready from now on. Said in this step: the cluster steps a concluded Rollout
        # only when an annotation it reads changes (its timer stops), so a later observation would not correct it.
        st.arms = [a if a.name in keep else a.model_copy(update={"ready": False}) for a in st.arms]
        ensure_arms(keep)
        return Result(actions, st)

    def release() -> Result[RolloutStatus]:
        # Its Evolution released it (actions.A_RELEASED): production reaches none of its arms any more, so the
        # arms it kept (control, a winner) and its router entry go, and are not set up again.
        for arm in names:
            seen = obs.arms.get(arm)
            if seen is not None and seen.exists:
                actions.append(DeleteArm(arm_name(meta, arm), owner, meta.name, arm))
        if obs.weights is not None:
            actions.append(ClearWeights(owner, meta.name, serving.wire()))
        st.arms = [a.model_copy(update={"ready": False}) for a in st.arms]
        return Result(actions, st)

    if resumed:
        journal("Resumed", resumed)
    if shortened:
        journal("RampShortened", f"the ramp has {len(spec.ramp.steps)} steps now: step {was} goes on as step {st.step}",
                warning=True)
    if st.phase is None:
        st.phase = "Pending"
        journal("Created", f"arms {', '.join(names)}; {len(spec.ramp.steps)} ramp steps")

    # An approval to promote counts only while the analysis recommends a promotion (AwaitingApproval). One given
    # before approved nothing: kept, it promoted whatever a later analysis recommended. It is removed, with a
    # Warning saying why, and the human approves again once the Rollout awaits approval.
    approval = obs.approval
    if approval is not None and approval not in APPROVALS:  # a typo ("promte", "yes") must not pass for no answer
        actions.append(Mark("Rollout", meta.name, owner, A_APPROVE, None))
        journal("ApprovalIgnored", f"{A_APPROVE}={approval[:64]!r} removed: not a decision; the accepted values are "
                f"{' and '.join(APPROVALS)}", warning=True)
        approval = None
    if approval == "promote" and st.phase not in ("AwaitingApproval", *CONCLUDED):
        actions.append(Mark("Rollout", meta.name, owner, A_APPROVE, None))
        journal("ApprovalIgnored", f"{A_APPROVE}=promote removed: given while {st.phase}, before any analysis "
                "recommended a promotion; approve again once the Rollout is AwaitingApproval", warning=True)
        approval = None

    # A human decision (annotation cambrian.dev/approve) applies at once; its Evolution's retirement after a readout
    # already due: the data is in, and what it decides is the rollout's own decision, whichever order a platform
    # steps a rollout and its Evolution in (a launch retires the rollouts of its champion's other challengers).
    retiring = approval == "rollback" and bool(obs.retired)
    by_hand = ((approval == "rollback" and not retiring)
               or (approval == "promote" and st.phase == "AwaitingApproval"))

    def conclude_as_asked() -> Result[RolloutStatus]:
        st.reason = (f"retired by its Evolution: {obs.retired}" if retiring else
                     f"{approval} approved by annotation cambrian.dev/approve")
        st.retired = obs.retired if retiring else None
        _conclude(spec, st, approval, now, journal, asked=True)
        return finish()

    if st.phase in CONCLUDED:
        return finish()

    if st.phase in ("Pending", "Deploying"):
        if by_hand or retiring:  # asked to end before it started: no user may be routed to a treatment
            return conclude_as_asked()
        st.phase = "Deploying"
        if not ensure_arms(names):
            cond("ArmsReady", False, "Deploying", "waiting for every arm's Deployment to be ready")
            note_blocker(st, "ArmsReady", arms_blocked(names), now, meta.generation, journal)
            return Result(actions, st, requeue_after=POLL_SECONDS)
        note_blocker(st, "ArmsReady", None, now, meta.generation, journal)
        cond("ArmsReady", True, "Ready", "every arm is serving")
        other = HR.held_by_another(meta.name, obs.route)
        if other:  # one experiment per route (httproute.py): the ramp and its clocks start once it is free
            why = (f"{route} carries rollout {other}'s experiment: this rollout starts once that one concluded "
                   "and the route is back on the champion")
            if next((c.reason for c in st.conditions if c.type == HR.HELD), None) != HR.WAITING:
                journal(HR.WAITING, why)
            cond(HR.HELD, False, HR.WAITING, why)
            return Result(actions, st, requeue_after=POLL_SECONDS)
        st.phase = "Running"
        st.step = 0
        st.started_at = now
        st.step_started_at = now
        st.step_history = [now]
        st.next_readout_at = after(now, spec.metrics.readout.interval)
        sync_weights()
        journal("Started", f"step 0: {st.weights_summary}")
        return Result(actions, st, requeue_after=wake())

    # Running or AwaitingApproval; a stopped arm's Deployment is not kept (release_stopped)
    live = [n for n in names if n not in stopped_arms(st)]
    arms_ready = ensure_arms(live)
    cond("ArmsReady", arms_ready, "Ready" if arms_ready else "ArmNotReady",
         "" if arms_ready else "an arm is not ready; weights are kept as they are")
    note_blocker(st, "ArmsReady", None if arms_ready else arms_blocked(live), now, meta.generation, journal)

    if not by_hand and readout_due(status, now):
        outcome = _readout(spec, st, obs, now, cond, journal)
        if outcome is not None:
            _conclude(spec, st, outcome, now, journal)
            return finish()
        _stop_decided_arms(spec, st, now, journal)
    if by_hand or retiring:
        return conclude_as_asked()

    # Ramp and time limit (only while no decision is pending).
    if st.phase == "Running":
        started = st.started_at or now
        if now - started >= timedelta(seconds=duration_seconds(spec.statistics.max_duration)):
            st.reason = f"no decision within maxDuration {spec.statistics.max_duration}"
            _conclude(spec, st, "inconclusive", now, journal)
            return finish()
        step_end = (st.step_started_at or now) + timedelta(seconds=duration_seconds(spec.ramp.steps[st.step].duration))
        if st.step + 1 < len(spec.ramp.steps) and now >= step_end:
            st.step += 1
            st.step_started_at = now
            st.step_history = [*st.step_history, now]
            journal("Ramped", f"step {st.step}: {_summary(desired_weights(spec, st))}")
    release_stopped()
    sync_weights()
    return Result(actions, st, requeue_after=wake())


def _readout(spec, st: RolloutStatus, obs: RolloutObservation, now, cond, journal) -> str | None:
    """Apply one analysis; returns a final outcome or None to keep running."""
    st.next_readout_at = after(now, spec.metrics.readout.interval)
    a = obs.analysis
    if a is None:
        # Prometheus unreachable or no data: decide nothing, never promote; retry soon.
        retry = min(METRICS_RETRY_SECONDS, duration_seconds(spec.metrics.readout.interval))
        st.next_readout_at = now + timedelta(seconds=retry)
        why = (obs.unavailable or "no readout")[:512]
        cond("MetricsAvailable", False, "MetricsUnavailable", f"{why}; no decision was taken")
        journal("ReadoutSkipped", f"metrics unavailable: no decision ({why})", warning=True)
        return None
    cond("MetricsAvailable", True, "Readout", f"readout {st.readouts + 1}")
    st.readouts += 1
    if a.state is not None:
        st.decision_state = a.state
    # each treatment's own verdict; an analysis that names no arm says the same of every one. An arm stopped at an
    # earlier readout keeps what it had then (users, verdict, effects, guardrails): it is no longer read.
    own = {arm: (o, why) for arm, o, why in a.arm_outcomes}
    kept = {arm.name: arm for arm in st.arms if arm.stopped_at is not None}
    st.effects = [e for e in st.effects if e.arm in kept] + [
        ArmEffect(arm=e.arm, metric=e.metric, estimate=e.estimate, ci_low=e.ci_low, ci_high=e.ci_high,
                  relative=e.relative, p_value=e.p_value, planned_effect=e.planned_effect)
        for e in a.effects if e.arm not in kept]
    st.arms = [kept[n] if n in kept else
               ArmStatus(name=n, n=a.n.get(n, 0)) if n == spec.control.name else  # weights/ready refreshed below
               _with_outcome(ArmStatus(name=n, n=a.n.get(n, 0)), *own.get(n, (a.outcome, a.reason)))
               for n in spec.arm_names()]
    st.guardrails = [g for g in st.guardrails if g.arm in kept] + [
        GuardrailReading(arm=arm, metric=m, breached=b) for arm, m, b in a.guardrails if arm not in kept]
    if a.srm_p_value is not None:
        st.srm = SRM(p_value=a.srm_p_value, mismatch=a.srm_mismatch)
    if a.srm_mismatch:
        st.reason = f"sample ratio mismatch (p={a.srm_p_value:.2g}): assignment is broken, rolling back"
        return "rollback"
    if a.outcome == "rollback":
        st.reason = a.reason
        return "rollback"
    if a.outcome == "inconclusive":
        st.reason = a.reason
        return "inconclusive"
    if a.outcome == "promote":
        short = [arm for arm in spec.arm_names() if a.n.get(arm, 0) < spec.statistics.min_sample_per_arm]
        if short or a.winner not in [t.name for t in spec.treatments]:
            st.reason = f"promote signal ignored: arms below minSamplePerArm: {', '.join(short)}" if short else \
                f"promote signal without a valid winning treatment ({a.winner!r})"
            return None
        st.recommendation = "promote"
        st.winner = a.winner
        if spec.decision_policy == "auto":
            st.reason = a.reason
            return "promote"
        if st.phase != "AwaitingApproval":
            journal("AwaitingApproval", f"analysis recommends promoting {a.winner}: {a.reason}")
        st.phase = "AwaitingApproval"
        st.reason = f"{a.reason}; waiting for annotation cambrian.dev/approve=promote"
        return None
    # continue
    st.reason = a.reason
    if st.phase == "AwaitingApproval":
        st.phase = "Running"  # the evidence no longer supports a promotion
        st.recommendation = None
    return None


def _stop_decided_arms(spec, st: RolloutStatus, now: datetime, journal) -> None:
    """A/B/n: a treatment this readout decided (rollback: harmful; inconclusive: futile or its final look) while the
    Rollout goes on is stopped: from now on the router serves its users control's model (sync_weights), so no user
    stays on a treatment already decided against. Its weight and its users' assignment stay (no new router phase,
    so the arms still running are measured as before), and the analysis passes its verdict on (readout.analyse:
    decide's `stopped`)."""
    new = [a.name for a in st.arms if a.name != spec.control.name and a.stopped_at is None
           and a.outcome in ("rollback", "inconclusive")]
    st.arms = [a.model_copy(update={"stopped_at": now}) if a.name in new else a for a in st.arms]
    for a in st.arms:
        if a.name in new:
            what = "rolled back" if a.outcome == "rollback" else "dropped (inconclusive)"
            journal("ArmStopped", f"arm {a.name} {what} while the other arms go on; its users keep their assignment "
                    f"and are served {spec.control.name}'s model from now on: {a.reason}",
                    warning=a.outcome == "rollback", arm=a.name, outcome=a.outcome)


def _conclude(spec, st: RolloutStatus, outcome: str, now, journal, asked: bool = False) -> None:
    """`asked`: a human or its Evolution ended it (annotation), not its analysis or its time limit."""
    st.decision = outcome  # type: ignore[assignment]
    st.phase = {"promote": "Promoted", "rollback": "RolledBack", "inconclusive": "Inconclusive"}[outcome]
    if outcome != "promote":
        st.winner = None
    st.concluded_at = now
    st.next_readout_at = None
    st.recommendation = None
    st.arms = [_final_outcome(spec, st, _arm(st, n), outcome, asked) for n in spec.arm_names()]
    journal(st.phase, f"{outcome}: {st.reason}", warning=outcome == "rollback", winner=st.winner)


def _final_outcome(spec, st: RolloutStatus, arm: ArmStatus, outcome: str, asked: bool) -> ArmStatus:
    """A treatment arm's own final outcome, which its Hypothesis records: the Rollout's decision is about the
    Rollout (A/B/n: one arm rolled back as harmful while the others end inconclusive concludes Inconclusive).
    An arm without a verdict is inconclusive when the Rollout's own test ended (maxDuration: it had its full test)
    and stays `continue` (undecided) when another arm's decision ended the Rollout first: its Hypothesis goes back
    to the review (Scored) instead of being Retired as if its test had found nothing."""
    if arm.name == spec.control.name:
        return arm
    if outcome == "promote" and arm.name == st.winner:
        return _with_outcome(arm, "promote", st.reason)
    if arm.outcome in ("rollback", "inconclusive"):  # its own verdict at the last readout stands
        return arm
    if outcome == "rollback" and asked:  # a human or its Evolution rolled every arm back
        return _with_outcome(arm, "rollback", st.reason)
    last = f"; its last readout: {arm.reason}" if arm.reason else ""
    if outcome == "inconclusive":
        return _with_outcome(arm, "inconclusive", f"its test ended without a verdict ({st.reason}){last}")
    return _with_outcome(arm, "continue", f"undecided: the rollout concluded ({outcome}: {st.reason}) before its "
                                          f"test decided about this arm{last}")


def _with_outcome(arm: ArmStatus, outcome: str, reason: str | None) -> ArmStatus:
    return arm.model_copy(update={"outcome": outcome, "reason": (reason or "")[:REASON_MAX] or None})


def _until(st: RolloutStatus, spec: RolloutSpec, now: datetime) -> float:
    times = [t for t in (st.next_readout_at,) if t is not None]
    # a stopped arm's Deployment goes at the first reconcile past its grace (reconcile)
    times += [a.stopped_at + timedelta(seconds=REDIRECT_GRACE_SECONDS) for a in st.arms
              if a.stopped_at is not None and a.stopped_at + timedelta(seconds=REDIRECT_GRACE_SECONDS) > now]
    if st.step_started_at is not None and st.step + 1 < len(spec.ramp.steps):
        times.append(st.step_started_at + timedelta(seconds=duration_seconds(spec.ramp.steps[st.step].duration)))
    if not times:
        return POLL_SECONDS
    return max(1.0, min((t - now).total_seconds() for t in times))


def _arm(st: RolloutStatus, arm: str) -> ArmStatus:
    """The arm's status so far (users, outcome), a new one when it has none."""
    return next((a for a in st.arms if a.name == arm), None) or ArmStatus(name=arm)


def finalize(meta: Meta, spec: RolloutSpec, serving: Serving, routed: bool = True,
             route: RouteObservation | None = None, champion: str | None = None) -> list:
    """On deletion: every user of its router back on control, spec.serving.httpRoute back on the `champion`'s
    Service if this rollout holds it (httproute.hand_back), then the rollout's router and arms go.
    `routed`: the router has an entry for this rollout (else there is no traffic to move)."""
    owner = owner_of(meta)
    back = {n: (100 if n == spec.control.name else 0) for n in spec.arm_names()}
    # phase 0: the status is not read on deletion; the router moves any weight change past its current phase.
    # The route is not written here: it goes to the champion next, or is another rollout's.
    actions: list = [_set_weights(meta, spec, back, serving, 0)] if routed else []
    actions += HR.hand_back(meta.name, route, champion, owner, serving.wire())
    actions.append(ClearWeights(owner, meta.name, serving.wire()))
    actions += [DeleteArm(arm_name(meta, arm), owner, meta.name, arm) for arm in spec.arm_names()]
    return actions
