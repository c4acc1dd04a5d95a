"""Self-repair, pure (both platforms): a hypothesis that failed at a stage the proposer can fix (the gate,
a crash or a NaN in training, ...) goes back to the proposer once, with its error, at the next wake-up.
The Evolution's status.repairs remembers which were asked until the failed Hypothesis carries the mark
(annotation cambrian.dev/repair-asked, written at the next reconcile once that status is persisted), so each
failure is repaired at most once, also when the proposer returns nothing usable, however many there were (the
list is bounded: before the mark, a failure that fell off it was asked again); a repair (origin.repairOf set) is
never repaired again."""

from __future__ import annotations

from typing import Sequence

from cambrian.agents.journal import REPAIRABLE_STAGES
from cambrian.operator.reconcile import marks as M
from cambrian.operator.reconcile.actions import A_REPAIR_ASKED, Mark, Owner
from cambrian.operator.reconcile.observations import HypothesisView

MAX_REMEMBERED = 256  # the status field's bound; it holds only the asked Hypotheses not yet marked


def to_repair(hypotheses: Sequence[HypothesisView], asked: Sequence[str]) -> tuple[str, ...]:
    done = set(asked)
    return tuple(sorted(h.name for h in hypotheses
                        if h.phase == "Failed" and h.failure_stage in REPAIRABLE_STAGES and h.repair_of is None
                        and h.repair_asked is None and h.name not in done))


def remember(asked: list[str], repairs: Sequence[str]) -> list[str]:
    return (list(asked) + list(repairs))[-MAX_REMEMBERED:]


def acknowledge(owner: Owner, persisted: Sequence[str], asked: Sequence[str], hypotheses: Sequence[HypothesisView],
                wakeup: int) -> tuple[list[Mark], list[str]]:
    """Marks for the failed Hypotheses the persisted status says were asked (the wake-up is the latest's: a mark
    says that it was asked, not when), and `asked` without those already marked (marks.py)."""
    seen = {h.name: h.repair_asked for h in hypotheses}
    return ([Mark("Hypothesis", n, owner, A_REPAIR_ASKED, str(wakeup)) for n in M.to_mark(persisted, seen)],
            M.forget_marked(asked, seen))
