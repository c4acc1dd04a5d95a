"""Local mode: the operator's reconcile loop over objects on disk and the LocalPlatform.

    driver = LocalDriver("runs/feed")
    driver.apply(load_manifests("manifests/examples/evolution.yaml"))
    summary = driver.run()

Level-based like the cluster: every pass reconciles every stored object once through the same step as
the kopf handlers (cambrian.operator.loop: gather observations -> core -> apply actions), then writes
the new status to the object's file. Time is simulated and durable (`DIR/clock.json`): while training
runs, the clock waits for it; when nothing is in flight, it jumps to the next moment something is due
(a wake-up, a review, a readout, a ramp step), playing each simulated day of live rollouts on the way.
Killed at any point and started again, the driver resumes from the files: children have names derived
from their owner's uid, so a replayed step finds what it created before instead of duplicating it.
"""

from __future__ import annotations

import fcntl
import json
import logging
import signal
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Callable, Iterable

from cambrian.errors import CambrianError
from cambrian.operator import api, loop
from cambrian.operator.api import duration_seconds
from cambrian.operator.localstore import NAMESPACE, LocalStore, write_atomic
from cambrian.operator.platform.local import SIM_EPOCH, LocalPlatform, clock_day, day_start
from cambrian.operator.reconcile.actions import CreateRollout
from cambrian.operator.reconcile import hypothesis as H
from cambrian.operator.reconcile.views import evaluations

log = logging.getLogger("cambrian.local")

KINDS = ("Evolution", "Hypothesis", "Rollout")
IN_FLIGHT = (None, "Proposed", "Training")
LIVE = ("Pending", "Deploying", "Running", "AwaitingApproval")
MAX_PASSES = 50  # passes at one instant before the objects are declared not to converge
MAX_APPLY_FAILURES = 3
# An Evolution whose latest wake-ups in a row, this many of this run's, created nothing (its proposer fails: see
# reconcile/wakeups.py) and that has nothing else in flight ends a local run instead of backing off through
# max_days of wake-ups. Counted per run: running the same command again (a fixed key) asks again.
GIVE_UP_AFTER_EMPTY_WAKEUPS = 6
TIMELINE = "timeline.jsonl"  # per rollout folder: weights and readouts over time (for reports)
# spec.cadence.online of a local run of the offline loop alone (benchmarks, the old evolve.yaml format): the one
# review inside the run comes when the baseline is trained, with nothing scored yet, so no Rollout ever starts.
NO_REVIEW = "3650d"


class DriverError(CambrianError):
    pass


@dataclass
class Summary:
    reason: str
    now: datetime
    days: float
    phases: dict[str, dict[str, str | None]] = field(default_factory=dict)  # kind -> name -> phase
    awaiting_approval: list[str] = field(default_factory=list)
    stalled: list[str] = field(default_factory=list)  # Evolutions given up on: their proposer created nothing


class LocalDriver:
    def __init__(self, root: str | Path, *, data_dir: str | Path | None = None, workers: int = 1,
                 max_days: float = 60.0, poll_s: float = 0.5, proposer: Any = None, limits: Any = None,
                 train_command: list[str] | None = None, on_pass: Callable[["LocalDriver"], None] | None = None,
                 until: Callable[["LocalDriver"], str | None] | None = None, warehouse: Any = None,
                 promql_url: str | None = None, warm: bool = True, warm_cache: int = 4,
                 warm_zygote: bool = True):
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.store = LocalStore(self.root)
        self.clock_path = self.root / "clock.json"
        self.now = datetime.fromisoformat(self.clock_path.read_text().strip()) if self.clock_path.is_file() else SIM_EPOCH
        if proposer is None:
            from cambrian.operator.proposing import ClusterProposer

            proposer = ClusterProposer()
        self.platform = LocalPlatform(self.root, self.store, lambda: self.now, proposer=proposer, data_dir=data_dir,
                                      workers=workers, limits=limits, train_command=train_command,
                                      warehouse=warehouse, promql_url=promql_url, warm=warm,
                                      warm_cache=warm_cache, warm_zygote=warm_zygote)
        self.max_days, self.poll_s, self.on_pass = max_days, poll_s, on_pass
        self.until = until  # an extra reason to stop once the objects are settled (None: go on)
        self.cache: dict = {}
        self._failures: dict[tuple[str, str], int] = {}
        # evolution -> the Scored hypotheses its last review saw and started nothing for (None: it started some)
        self._quiet_review: dict[str, frozenset | None] = {}
        self._wakeups_at_start: dict[str, int] = {}  # per Evolution: counters.wakeups when run() began

    # --- objects -------------------------------------------------------------------------------
    def apply(self, objects: Iterable[dict[str, Any]]) -> list[str]:
        return [f"{o['kind'].lower()}/{o['metadata']['name']} {self.store.apply(o, self.now)}" for o in objects]

    def approve(self, rollout: str, decision: str) -> None:
        if decision not in ("promote", "rollback"):
            raise DriverError(f"approve: {decision!r} is not promote or rollback")
        if not self.store.annotate("Rollout", rollout, {loop.APPROVE: decision}):
            raise DriverError(f"approve: no rollout {rollout!r} in {self.root}")

    def _set_now(self, t: datetime) -> None:
        self.now = t
        write_atomic(self.clock_path, t.isoformat() + "\n")

    # --- one pass ------------------------------------------------------------------------------
    def reconcile_once(self) -> bool:
        """Reconcile every object once at the current instant; True if anything changed or was done."""
        progressed = False
        for kind in KINDS:
            for obj in self.store.list(loop.PLURALS[kind], NAMESPACE):
                before = evaluations(obj.get("status") or {})
                progressed |= self._reconcile(kind, obj)
                if kind == "Hypothesis":
                    self._after_training_started(obj, before)
        if self.on_pass is not None:
            self.on_pass(self)
        return progressed

    def _after_training_started(self, hyp: dict[str, Any], attempts_before: int) -> None:
        """A training run just started: let the Evolution count it before the next Hypothesis asks whether
        the budget allows one more (the spend is the Evolution's status, rolled up from its Hypotheses)."""
        now = self.store.get("hypotheses", NAMESPACE, hyp["metadata"]["name"]) or {}
        if evaluations(now.get("status") or {}) == attempts_before:
            return
        ref = ((hyp.get("spec") or {}).get("evolutionRef") or {}).get("name")
        evo = self.store.get("evolutions", NAMESPACE, ref) if ref else None
        if evo is not None:
            self._reconcile("Evolution", evo)

    def _reconcile(self, kind: str, obj: dict[str, Any]) -> bool:
        name = obj["metadata"]["name"]
        old = obj.get("status") or {}
        try:
            s = loop.step(kind, obj, self.store, self.platform, self.now, self.cache)
        except loop.ApplyFailed as exc:
            key = (kind, name)
            self._failures[key] = self._failures.get(key, 0) + 1
            log.warning("%s %s: %s (%s)", kind, name, exc, exc.__cause__)
            if self._failures[key] >= MAX_APPLY_FAILURES:
                raise DriverError(f"{kind} {name}: {exc.__cause__ or exc}") from None
            time.sleep(self.poll_s)  # a busy machine or a slow process: give it a moment before the replay
            return True
        self._failures.pop((kind, name), None)
        if s.result is None:  # failed until its spec changes, and it has not changed
            return False
        new = s.result.status.wire()
        self.store.write_status(kind, name, new)
        if kind == "Rollout":
            self._timeline(name, old, new, s.analysis)
        if s.failed:
            if new != old:
                log.error("%s %s: %s", kind, name, new.get("reason"))
            return new != old
        if kind == "Evolution" and new.get("counters", {}).get("reviews", 0) > (old.get("counters") or {}).get("reviews", 0):
            started = any(isinstance(a, CreateRollout) for a in s.result.actions)
            self._quiet_review[name] = None if started else _scored(s.hypotheses)
        if kind == "Evolution" and _champion(new) != _champion(old):
            self._quiet_review[name] = None  # a launch frees its slots and changes what the next review can start
        return bool(s.result.actions) or new != old

    def _timeline(self, name: str, old: dict[str, Any], new: dict[str, Any], analysis: Any) -> None:
        """A rollout's history for the report (`ROOT/rollouts/<name>/timeline.jsonl`): every weight change and
        every readout with the statistics' per-arm detail, which its status keeps only for the last look.
        Rows carry the readout count; a step replayed after a kill writes its row again, readers keep the last."""
        rows = []
        day = None if not new.get("startedAt") else clock_day(self.now) - clock_day(datetime.fromisoformat(new["startedAt"]))
        weights = {a["name"]: a.get("weight", 0) for a in new.get("arms") or []}
        if new.get("weightsSummary") != old.get("weightsSummary") and weights:
            rows.append({"kind": "weights", "day": day, "weights": weights})
        if analysis is not None and new.get("readouts", 0) > old.get("readouts", 0):
            rows.append({"kind": "readout", "readout": new["readouts"], "day": None if day is None else day - 1,
                         "outcome": analysis.outcome, "reason": analysis.reason, "n": dict(analysis.n),
                         "arms": analysis.detail or {}})
        if new.get("phase") != old.get("phase") and new.get("phase") in ("Promoted", "RolledBack", "Inconclusive"):
            rows.append({"kind": "concluded", "day": day, "outcome": new.get("decision"), "winner": new.get("winner"),
                         "reason": new.get("reason")})
        if rows:
            path = self.root / "rollouts" / name / TIMELINE
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "a", encoding="utf-8") as fh:
                for row in rows:
                    fh.write(json.dumps({"time": self.now.isoformat(), **row}, sort_keys=True, default=str) + "\n")

    # --- the loop ------------------------------------------------------------------------------
    def run(self) -> Summary:
        lock = open(self.root / "driver.lock", "w")
        # a child that a training thread forks keeps a copy of the lock until it execs: give such a moment
        # (a driver of this process that just ended) two seconds; another driver holds it for its whole run
        deadline = time.monotonic() + 2.0
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    lock.close()
                    raise DriverError(f"another cambrian process is driving {self.root}") from None
                time.sleep(0.05)
        previous = None
        if threading.current_thread() is threading.main_thread():  # SIGTERM stops cleanly, like Ctrl-C
            previous = signal.signal(signal.SIGTERM, _interrupt)
        try:
            self.platform.recover()
            self._wakeups_at_start = {e["metadata"]["name"]: _counter(e, "wakeups") for e in self.store.list("evolutions")}
            return self._loop()
        finally:
            self.platform.close()
            lock.close()
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)

    def _loop(self) -> Summary:
        passes = 0
        while True:
            in_flight = self.platform.busy()
            if self.reconcile_once():
                passes += 1
                if passes > MAX_PASSES:
                    raise DriverError(f"objects still changing after {MAX_PASSES} passes at {self.now.isoformat()}")
                continue
            passes = 0
            if self.platform.busy():
                time.sleep(self.poll_s)
                continue
            if in_flight:  # a run ended during the pass: the next pass reads its result before the clock moves
                continue
            reason = self.finished() or (self.until(self) if self.until is not None else None)
            if reason:
                return self.summary(reason)
            due = self.next_due()
            routed = self.platform.routed()
            day_end = day_start(clock_day(self.now) + 1)
            if due is None and not routed:
                return self.summary("nothing is scheduled")
            target = day_end if due is None else (min(due, day_end) if routed else due)
            if (target - SIM_EPOCH) > timedelta(days=self.max_days):
                return self.summary(f"stopped at the simulated-time limit of {self.max_days:g} days")
            if routed and target >= day_end:
                self.platform.advance(day_end)
            self._set_now(target)

    def next_due(self) -> datetime | None:
        """The next moment a stored object has something scheduled (strictly after now)."""
        times: list[datetime] = []
        for evo in self.store.list("evolutions"):
            st = api.parse_status("Evolution", evo.get("status"))
            if st.phase == "Failed":
                continue
            if st.champion.bundle and st.next_review_at:
                times.append(st.next_review_at)
            if st.phase == "Running" and st.next_wakeup_at:
                times.append(st.next_wakeup_at)
        for ro in self.store.list("rollouts"):
            st = api.parse_status("Rollout", ro.get("status"))
            if st.phase not in ("Running", "AwaitingApproval"):
                continue
            try:
                spec = api.parse_spec("Rollout", ro.get("spec"))
            except CambrianError:
                continue
            if st.next_readout_at:
                times.append(st.next_readout_at)
            if st.started_at:
                times.append(st.started_at + timedelta(seconds=duration_seconds(spec.statistics.max_duration)))
            if st.step_started_at and st.step + 1 < len(spec.ramp.steps):
                times.append(st.step_started_at + timedelta(seconds=duration_seconds(spec.ramp.steps[st.step].duration)))
        later = [t for t in times if t > self.now]
        return min(later) if later else None

    def finished(self) -> str | None:
        """Why there is nothing left to do, or None. A rollout waiting for a human ends the run too."""
        rollouts = self.store.list("rollouts")
        evolutions = self.store.list("evolutions")
        hyps = self.store.list("hypotheses")
        if not rollouts and not evolutions:
            return "no Evolution or Rollout objects"
        phase = lambda o: (o.get("status") or {}).get("phase")  # noqa: E731
        live = [r for r in rollouts if phase(r) in LIVE or phase(r) is None]
        if live and all(phase(r) == "AwaitingApproval" for r in live) and not self.evolutions_busy(evolutions, hyps):
            return "waiting for approval: " + ", ".join(r["metadata"]["name"] for r in live)
        if live:
            return None
        if not evolutions:
            return "every rollout concluded"
        if self.evolutions_busy(evolutions, hyps):
            return None
        return "every Evolution is done: " + "; ".join(
            f"{e['metadata']['name']} {phase(e)}" + (f" ({e['status'].get('reason')})" if e["status"].get("reason") else "")
            + (f" (its last {_counter(e, 'emptyWakeups')} wake-ups created no Hypothesis: see their events)"
               if self._stalled(e) else "")
            for e in evolutions)

    def evolutions_busy(self, evolutions: list[dict], hyps: list[dict]) -> bool:
        """An Evolution is still proposing, training, deciding, or has scored hypotheses no review has seen."""
        for e in evolutions:
            st = e.get("status") or {}
            if st.get("phase") == "Failed":
                continue
            if (st.get("phase") != "BudgetExhausted" and not self._stalled(e)) or not (st.get("champion") or {}).get("bundle"):
                return True  # still proposing (or training its baseline)
            mine = [h for h in hyps if ((h.get("spec") or {}).get("evolutionRef") or {}).get("name") == e["metadata"]["name"]]
            if any((h.get("status") or {}).get("phase") in IN_FLIGHT or _between_tests(h) for h in mine):
                return True
            if self._review_in_time(e) and self._quiet_review.get(e["metadata"]["name"]) != _scored(mine):
                return True  # no review has looked at everything scored yet (and started nothing)
        return False

    def _review_in_time(self, evolution: dict) -> bool:
        """Its next review (unscheduled yet: the first) falls within the simulated-time limit; a later one (the
        old evolve.yaml format never reviews: cadence.online NO_REVIEW) is not worth waiting for."""
        at = api.parse_status("Evolution", evolution.get("status")).next_review_at
        return at is None or at - SIM_EPOCH <= timedelta(days=self.max_days)

    def _stalled(self, evolution: dict) -> bool:
        """Its proposer created nothing in the latest GIVE_UP_AFTER_EMPTY_WAKEUPS wake-ups, all of this run."""
        this_run = _counter(evolution, "wakeups") - self._wakeups_at_start.get(evolution["metadata"]["name"], 0)
        return ((evolution.get("status") or {}).get("phase") == "Running"
                and min(_counter(evolution, "emptyWakeups"), this_run) >= GIVE_UP_AFTER_EMPTY_WAKEUPS)

    def summary(self, reason: str) -> Summary:
        phases = {k: {o["metadata"]["name"]: (o.get("status") or {}).get("phase")
                      for o in self.store.list(loop.PLURALS[k])} for k in KINDS}
        waiting = [n for n, p in phases["Rollout"].items() if p == "AwaitingApproval"]
        stalled = [e["metadata"]["name"] for e in self.store.list(loop.PLURALS["Evolution"]) if self._stalled(e)]
        return Summary(reason, self.now, (self.now - SIM_EPOCH) / timedelta(days=1), phases, waiting, stalled)


def _between_tests(hyp: dict[str, Any]) -> bool:
    """Live, its rollout concluded: what it becomes (Launched, Retired, or Scored again for another test when a
    launch overtook its rollout) waits on its Evolution applying the decision (hypothesis.py)."""
    st = hyp.get("status") or {}
    return st.get("phase") == "Live" and any(
        c.get("type") == "Live" and c.get("reason") in (H.AWAITING_LAUNCH, H.AWAITING_DECISION)
        for c in st.get("conditions") or [])


def _champion(status: dict[str, Any]) -> str | None:
    return (status.get("champion") or {}).get("bundle")


def _scored(hyps: Iterable[dict[str, Any]]) -> frozenset:
    return frozenset(h["metadata"]["name"] for h in hyps if (h.get("status") or {}).get("phase") == "Scored")


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt()


def _counter(evolution: dict, name: str) -> int:
    return int(((evolution.get("status") or {}).get("counters") or {}).get(name) or 0)
