"""Helpers shared by the reconcilers: child names, conditions, the result type."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Generic, TypeVar

from cambrian.operator.api import Condition, duration_seconds
from cambrian.operator.reconcile.actions import Action, Owner, RecordJournal

S = TypeVar("S")
_INVALID = re.compile(r"[^a-z0-9-]+")


_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_LABEL_INVALID = re.compile(r"[^A-Za-z0-9_.-]+")
LABEL_MAX = 63


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def child_name(owner_name: str, owner_uid: str, step: str, max_len: int = 63) -> str:
    """A DNS-1035 label (a valid name for every kind, Services included) that depends only on
    (owner name, owner uid, step): re-running, or a restarted operator, never invents a new name.

    The owner's name is kept as a readable prefix; the hash of uid+step keeps names unique when the
    prefix is cut, and differs between two objects that reuse a name after a delete. A prefix that
    does not start with a letter gets a "c-" so Service names (which must) stay valid.
    """
    digest = _digest(f"{owner_uid}/{step}")
    readable = _INVALID.sub("-", f"{owner_name}-{step}".lower()).strip("-")
    if not readable[:1].isalpha():
        readable = f"c-{readable}".rstrip("-")
    readable = readable[: max_len - len(digest) - 1].rstrip("-")
    return f"{readable}-{digest}"


def data_snapshot(evolution_uid: str, data: dict[str, Any]) -> str | None:
    """The folder, relative to the Evolution's storage (its claim in a cluster, the run folder locally), of the one
    snapshot of its own source (spec.data.source, wire form) that every run of the Evolution trains and is scored
    on: fetched once, then kept (trainer/fetch.py), so rows a warehouse gains later never split two runs. Keyed by
    the Evolution (a new Evolution fetches anew: that is how newer rows are trained on) and by what the snapshot
    copies (the source, the declaration it is read through). None: the data is not a source."""
    source = data.get("source")
    if not source:
        return None
    custom = data.get("customDeclaration")
    declaration = json.dumps(custom, sort_keys=True) if custom else data.get("declaration") or "world"
    key = f"{evolution_uid} {source['uri']} {declaration}"
    return f"data/source-{hashlib.sha256(key.encode()).hexdigest()[:16]}"


def label_value(text: str) -> str:
    """`text` as a Kubernetes label value (<= 63 characters, alphanumeric at both ends): itself when it
    fits, else a readable cut plus a hash of the whole, the same on every call (selectors find it)."""
    if len(text) <= LABEL_MAX and _LABEL_VALUE.match(text):
        return text
    digest = _digest(text)
    readable = _LABEL_INVALID.sub("-", text)[: LABEL_MAX - len(digest) - 1].strip("-_.")
    return f"{readable}-{digest}" if readable else digest


def after(now: datetime, duration: str) -> datetime:
    return now + timedelta(seconds=duration_seconds(duration))


def set_condition(
    conditions: list[Condition],
    type_: str,
    status: bool | str,
    reason: str,
    message: str,
    now: datetime,
    generation: int | None,
) -> list[Condition]:
    """Upsert a condition; lastTransitionTime moves only when the status changes."""
    value = status if isinstance(status, str) else ("True" if status else "False")
    old = next((c for c in conditions if c.type == type_), None)
    unchanged = old is not None and old.status == value and old.last_transition_time is not None
    new = Condition(type=type_, status=value, reason=reason, message=message[:32768],  # the API's length cap
                    last_transition_time=old.last_transition_time if unchanged else now,
                    observed_generation=generation)
    return [new if c.type == type_ else c for c in conditions] + ([] if old else [new])


@dataclass
class Result(Generic[S]):
    """What one reconcile returns: actions to apply (in order), then the status to persist."""

    actions: list[Action]
    status: S
    requeue_after: float | None = None  # seconds; None = only on the next timer tick / event

    def kinds(self) -> list[str]:
        return [type(a).__name__ for a in self.actions]


@dataclass(frozen=True)
class Meta:
    name: str
    uid: str
    namespace: str | None = None
    generation: int | None = None
    annotations: dict[str, str] = field(default_factory=dict, hash=False)

    @classmethod
    def from_obj(cls, obj: dict[str, Any]) -> "Meta":
        m = obj.get("metadata", {})
        return cls(m["name"], m.get("uid", ""), m.get("namespace"), m.get("generation"), dict(m.get("annotations") or {}))


# ---------------------------------------------------------------------------------------------
# Failures only a spec change can cure
# ---------------------------------------------------------------------------------------------

# Ready-condition reasons of a failure that the same spec can only repeat: the object's spec does not
# parse (InvalidSpec), or the API server refused a child built from it (Refused). The reconcilers do
# nothing more until metadata.generation moves past the status.observedGeneration recorded then.
INVALID_SPEC = "InvalidSpec"
REFUSED = "Refused"
UNTIL_SPEC_CHANGES = (INVALID_SPEC, REFUSED)


def ready_reason(status: Any) -> str | None:
    return next((c.reason for c in status.conditions if c.type == "Ready"), None)


def failed_until_spec_changes(status: Any) -> bool:
    return status.phase == "Failed" and ready_reason(status) in UNTIL_SPEC_CHANGES


def blocked(status: Any, generation: int | None) -> bool:
    """The spec that failed is still the current one: reconciling again can only fail again."""
    return failed_until_spec_changes(status) and status.observed_generation == generation


def fail_until_spec_changes(meta: "Meta", kind: str, status: S, reason: str, message: str, now: datetime) -> "Result[S]":
    """Phase Failed, the reason in status and in a Warning event, and observedGeneration recorded so
    that `blocked` holds until the spec is edited. `status` is the last persisted one: whatever the
    failed reconcile meant to write is dropped with the actions it could not apply."""
    st = status.model_copy(deep=True)  # type: ignore[attr-defined]
    st.phase = "Failed"
    st.reason = message
    st.observed_generation = meta.generation
    st.conditions = set_condition(st.conditions, "Ready", False, reason, message, now, meta.generation)
    owner = Owner(kind, meta.name, meta.uid, meta.namespace)
    note = f"{message} (nothing more is tried until the spec changes)"
    return Result([RecordJournal(owner, reason, note, {"generation": meta.generation}, True)], st)


def resume_after_spec_change(status: Any, generation: int | None, phase: str | None, now: datetime) -> str | None:
    """A failure that only a spec change could cure, and the spec changed: clear it so the reconcile
    starts again from `phase`. Mutates `status`; returns a journal message, or None when nothing to do."""
    if not failed_until_spec_changes(status) or status.observed_generation == generation:
        return None
    was = status.reason or ""
    status.phase = phase
    status.reason = None
    status.conditions = set_condition(status.conditions, "Ready", "Unknown", "SpecChanged",
                                      f"generation {generation}: trying again", now, generation)
    return f"the spec changed (generation {generation}); trying again after: {was}"[:1024]


def note_blocker(status: Any, condition: str, blocker: str | None, now: datetime, generation: int | None,
                 journal: Any) -> None:
    """A child waits on something missing outside the spec (a PVC, a PriorityClass, a queue, nodes,
    an image): say so in status.reason, in `condition` (reason Blocked) and in one Warning event per
    distinct message; clear the reason once the child moves on."""
    if blocker is None:
        if status.reason and status.reason.startswith("blocked: "):
            status.reason = None
        return
    message = f"blocked: {blocker}"[:1024]
    if status.reason != message:
        journal("Blocked", blocker, warning=True)
    status.reason = message
    status.conditions = set_condition(status.conditions, condition, False, "Blocked", blocker, now, generation)


def waiting_on(meta: "Meta", kind: str, status: S, blocker: str, now: datetime) -> "Result[S]":
    """A change the platform refused for a reason outside the spec (RBAC, a quota, a missing
    HTTPRoute): the last persisted status plus the reason (Ready=False, Blocked) and one Warning event
    per distinct message; the next reconcile tries again."""
    st = status.model_copy(deep=True)  # type: ignore[attr-defined]
    owner = Owner(kind, meta.name, meta.uid, meta.namespace)
    actions: list = []
    note_blocker(st, "Ready", blocker, now, meta.generation,
                 lambda event, message, warning=False: actions.append(RecordJournal(owner, event, message, {}, warning)))
    return Result(actions, st)


def clear_waiting(status: Any, now: datetime, generation: int | None) -> None:
    """After a reconcile whose changes were all applied: lift what `waiting_on` reported (Ready,
    Blocked, and its `blocked: ...` reason), which nothing else in the core would clear."""
    ready = next((c for c in status.conditions if c.type == "Ready"), None)
    if ready is None or ready.reason != "Blocked":
        return
    if status.reason == f"blocked: {ready.message}"[:1024]:
        status.reason = None
    status.conditions = set_condition(status.conditions, "Ready", "Unknown", "Applied",
                                      "the changes that were refused went through", now, generation)
