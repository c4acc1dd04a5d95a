"""The seed-to-seed noise floor and the verdict on a candidate (pure functions).

A candidate counts as better only if its gain over the baseline mean clears
    floor = max(z * sqrt(sd_b^2 / n_b + sd_c^2 / n_c), min_floor)
where sd_b is the baseline's std over its seeds and sd_c the candidate's (the baseline's when the
candidate has one seed). A single-seed gain above the floor makes a candidate "promising"; it becomes
"better" only after extra seeds confirm it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

from cambrian.agents.journal import Score


class NoiseSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    baseline_seeds: int = Field(3, ge=2, description="seeds of the baseline for the noise floor")
    z: float = Field(2.0, gt=0, description="how many standard errors a gain must clear")
    min_floor: float = Field(1e-4, ge=0, description="absolute lower bound of the floor")
    confirm_top: int = Field(2, ge=0, description="promising candidates re-run with extra seeds per generation")
    confirm_seeds: int = Field(2, ge=1, description="extra seeds for each confirmed candidate")


@dataclass(frozen=True)
class Judgement:
    gain: float
    floor: float
    verdict: str  # better | promising | not_better
    reason: str


def gain_of(candidate: float, baseline: float, lower_is_better: bool) -> float:
    return baseline - candidate if lower_is_better else candidate - baseline


def noise_floor(base: Score, cand_std: float | None, cand_n: int, s: NoiseSettings) -> float:
    sd_c = base.std if cand_std is None or cand_n < 2 else cand_std
    se = math.sqrt(base.std**2 / max(base.n, 1) + sd_c**2 / max(cand_n, 1))
    return max(s.z * se, s.min_floor)


def judge(metric: str, cand: Score, base: Score, lower_is_better: bool, s: NoiseSettings) -> Judgement:
    gain = gain_of(cand.mean, base.mean, lower_is_better)
    floor = noise_floor(base, cand.std, cand.n, s)
    seeds = f"{cand.n} seed{'s' if cand.n > 1 else ''}"
    head = f"{metric} {cand.mean:.5g} vs baseline {base.mean:.5g}±{base.std:.2g}: gain {gain:+.3g}"
    if gain > floor:
        if cand.n > 1:
            return Judgement(gain, floor, "better", f"{head} clears the noise floor {floor:.3g} over {seeds}")
        return Judgement(gain, floor, "promising", f"{head} clears the noise floor {floor:.3g} on {seeds}; "
                                                   "needs extra seeds to confirm")
    if gain < -floor:
        return Judgement(gain, floor, "not_better", f"{head}: worse than the baseline beyond the noise floor "
                                                    f"{floor:.3g} ({seeds})")
    return Judgement(gain, floor, "not_better", f"{head}: within the noise floor {floor:.3g} ({seeds}), "
                                                "indistinguishable from the baseline")
