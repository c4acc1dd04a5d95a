"""Helpers shared by the reconcilers: child names, conditions, the result type."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Generic, TypeVar

from cambrian.operator.api import Condition, duration_seconds
from cambrian.operator.reconcile.actions import Action

S = TypeVar("S")
_INVALID = re.compile(r"[^a-z0-9-]+")


def child_name(owner_name: str, owner_uid: str, step: str, max_len: int = 63) -> str:
    """A DNS-1123 label that depends only on (owner uid, step): re-running never invents a new name.

    The owner's name is kept as a readable prefix; the hash of uid+step keeps names unique when the
    prefix is cut, and differs between two objects that reuse a name after a delete.
    """
    digest = hashlib.sha256(f"{owner_uid}/{step}".encode()).hexdigest()[:8]
    readable = _INVALID.sub("-", f"{owner_name}-{step}".lower()).strip("-")
    readable = readable[: max_len - len(digest) - 1].rstrip("-")
    return f"{readable}-{digest}"


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
    out = []
    found = False
    for c in conditions:
        if c.type == type_:
            found = True
            changed = c.status != value
            out.append(
                Condition(
                    type=type_,
                    status=value,
                    reason=reason,
                    message=message[:32768],
                    last_transition_time=now if changed or c.last_transition_time is None else c.last_transition_time,
                    observed_generation=generation,
                )
            )
        else:
            out.append(c)
    if not found:
        out.append(
            Condition(
                type=type_,
                status=value,
                reason=reason,
                message=message[:32768],
                last_transition_time=now,
                observed_generation=generation,
            )
        )
    return out


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
