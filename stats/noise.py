"""The seed-to-seed noise floor of an offline metric and the verdict on a candidate (pure functions).

Used by the operator's reconcile core (operator/reconcile/noise.py, both platforms). A candidate
counts as better only if its gain over the reference (the baseline, later the champion) clears
    floor = max(z * sqrt(sd_b^2 / n_b + sd_c^2 / n_c), min_floor)
where sd_b is the reference's std over its seeds and sd_c the candidate's (the reference's when the
candidate has one seed). A single-seed gain above the floor that its confirmation seeds would lead to
(n_c = 1 + confirm_seeds) makes a candidate "promising"; it becomes "better" only once the extra seeds
(confirmation seeds) are trained and the gain over all its seeds clears the floor with its own spread.

Scores are any objects with `mean`, `std` and `n`; settings any object with `z`, `min_floor` and
(optionally) `confirm_seeds`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Protocol

VERDICTS = ("better", "promising", "not_better")
CONFIRMATION_SEED_OFFSET = 1000  # confirmation seeds never coincide with the baseline's seeds


class SeedScore(Protocol):
    mean: float
    std: float
    n: int


class FloorSettings(Protocol):
    z: float
    min_floor: float


@dataclass(frozen=True)
class Score:
    """A metric over seeds: mean, sample std (0 for one seed), number of seeds."""

    mean: float
    std: float = 0.0
    n: int = 1


@dataclass(frozen=True)
class Judgement:
    gain: float
    floor: float
    verdict: str  # better | promising | not_better
    reason: str


def mean_std(values: Iterable[float]) -> tuple[float, float, int]:
    """Mean, sample standard deviation (0 for one value) and count."""
    vals = [float(v) for v in values]
    if not vals:
        raise ValueError("a score needs at least one value")
    m = sum(vals) / len(vals)
    var = sum((v - m) ** 2 for v in vals) / (len(vals) - 1) if len(vals) > 1 else 0.0
    return m, var**0.5, len(vals)


def baseline_seeds(base_seed: int, count: int) -> list[int]:
    """The seeds the baseline is trained with to measure its seed-to-seed noise."""
    return [base_seed + i for i in range(count)]


def confirmation_seeds(base_seed: int, count: int) -> list[int]:
    """The extra seeds a promising candidate is trained with (its first run uses `base_seed`)."""
    return [base_seed + CONFIRMATION_SEED_OFFSET + k for k in range(count)]


def gain_of(candidate: float, baseline: float, lower_is_better: bool) -> float:
    return baseline - candidate if lower_is_better else candidate - baseline


def noise_floor(base: SeedScore, cand_std: float | None, cand_n: int, s: FloorSettings) -> float:
    sd_c = base.std if cand_std is None or cand_n < 2 else cand_std
    se = math.sqrt(base.std**2 / max(base.n, 1) + sd_c**2 / max(cand_n, 1))
    return max(s.z * se, s.min_floor)


def judge(metric: str, cand: SeedScore, base: SeedScore, lower_is_better: bool, s: FloorSettings) -> Judgement:
    gain = gain_of(cand.mean, base.mean, lower_is_better)
    floor = noise_floor(base, cand.std, cand.n, s)
    seeds = f"{cand.n} seed{'s' if cand.n > 1 else ''}"
    head = f"{metric} {cand.mean:.5g} vs baseline {base.mean:.5g}±{base.std:.2g}: gain {gain:+.3g}"
    if cand.n == 1:
        # Worth its confirmation seeds if it would clear the floor they lead to (the candidate's own
        # spread unknown: the reference's). Asking one seed to clear the one-seed floor would leave the
        # confirmations nothing to do but repeat a verdict already made.
        after = 1 + int(getattr(s, "confirm_seeds", 0) or 0)
        bar = noise_floor(base, None, after, s)
        if gain > bar:
            return Judgement(gain, bar, "promising", f"{head} clears the noise floor {bar:.3g} expected after "
                                                     f"{after} seeds; needs extra seeds to confirm")
    elif gain > floor:
        return Judgement(gain, floor, "better", f"{head} clears the noise floor {floor:.3g} over {seeds}")
    if gain < -floor:
        return Judgement(gain, floor, "not_better", f"{head}: worse than the baseline beyond the noise floor "
                                                    f"{floor:.3g} ({seeds})")
    return Judgement(gain, floor, "not_better", f"{head}: within the noise floor {floor:.3g} ({seeds}), "
                                                "indistinguishable from the baseline")
