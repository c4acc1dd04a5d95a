"""Which promising Hypothesis trains its confirmation seeds when the evaluations budget cannot pay for all.

A first run whose gain clears one seed's noise floor is promising; it can be rolled out only after
spec.noise.confirmSeeds more seeds. Confirming whichever promising run finished first spent a budget's last
runs on weak candidates while the strongest of the wake-up stayed unconfirmed (the trap benchmark at full size:
first runs 17.9 to 27.6 noise floors above the champion were never confirmed). So, while the budget left pays
for every candidate that may still need confirming, a promising run is confirmed at once; otherwise it waits
until no first run is in flight, and the strongest (gain in noise floors) go first while the budget pays.
Pure: the caller reads the Evolution's Hypotheses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from cambrian.operator.reconcile.observations import HypothesisView

# The Training condition's reason while a promising run waits for its turn (the operator's sweep steps it again).
WAITING = "WaitingForConfirmationTurn"


@dataclass(frozen=True)
class Turn:
    go: bool
    why: str = ""  # when not go: what it waits for, or why it never will be confirmed
    final: bool = False  # not go, and never: score it as it is (promising, not rolled out)


def waiting(h: HypothesisView) -> bool:
    """Judged promising, its confirmation seeds not started."""
    return h.phase == "Training" and h.verdict == "promising" and h.confirmations == 0


def strength(h: HypothesisView) -> float:
    return (h.gain or 0.0) / h.noise_floor if h.noise_floor else 0.0


def turn(name: str, floors: float, seeds: int, left: int | None, peers: Sequence[HypothesisView]) -> Turn:
    """May `name` (a promising run `floors` noise floors above the champion) start its `seeds` confirmation
    seeds, with `left` evaluations left in the budget (None: no budget)? `peers`: the Evolution's Hypotheses."""
    if left is None:
        return Turn(True)
    if left < seeds:
        return Turn(False, f"the {left} evaluation(s) left cannot pay for {seeds} confirmation seeds", final=True)
    others = [p for p in peers if p.name != name]
    rivals = [p for p in others if waiting(p)]
    undecided = [p for p in others if p.phase == "Training" and p.verdict is None]
    if left >= seeds * (1 + len(rivals) + len(undecided)):
        return Turn(True)
    if undecided:
        return Turn(False, f"the {left} evaluation(s) left cannot confirm every promising run: waiting for "
                           f"{len(undecided)} first run(s) still training, then the strongest go first")
    stronger = sum(1 for p in rivals if (-strength(p), p.name) < (-floors, name))
    if (stronger + 1) * seeds <= left:
        return Turn(True)
    return Turn(False, f"the {left} evaluation(s) left pay for the confirmation seeds of {stronger} stronger "
                       f"promising run(s) first ({floors:.2f} noise floors here)", final=True)


def reserve(seeds: int, left: int, asked: int) -> int:
    """A wake-up's proposals under an evaluations budget: each needs one run, and the strongest promising one
    `seeds` more to be confirmed, so at most left - seeds (and at least one, as before a budget runs low)."""
    return max(1, min(asked, left - seeds))
