"""Self-repair, pure (both platforms): a hypothesis that failed at a stage the proposer can fix (the gate,
a crash or a NaN in training, ...) goes back to the proposer once, with its error, at the next wake-up.
The Evolution's status.repairs remembers which were asked, so each failure is repaired at most once,
also when the proposer returns nothing usable; a repair (origin.repairOf set) is never repaired again."""

from __future__ import annotations

from typing import Sequence

from cambrian.agents.journal import REPAIRABLE_STAGES
from cambrian.operator.reconcile.observations import HypothesisView

MAX_REMEMBERED = 256  # the status field's bound; older entries are far behind the wake-ups that repaired them


def to_repair(hypotheses: Sequence[HypothesisView], asked: Sequence[str]) -> tuple[str, ...]:
    done = set(asked)
    return tuple(sorted(h.name for h in hypotheses
                        if h.phase == "Failed" and h.failure_stage in REPAIRABLE_STAGES and h.repair_of is None
                        and h.name not in done))


def remember(asked: list[str], repairs: Sequence[str]) -> list[str]:
    return (list(asked) + list(repairs))[-MAX_REMEMBERED:]
