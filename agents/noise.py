"""Local evolve's noise settings. The noise floor and the verdict themselves are stats/noise.py,
shared with the operator's reconcile core (both platforms)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from cambrian.stats.noise import Judgement, gain_of, judge, noise_floor  # noqa: F401  (the one implementation)


class NoiseSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    baseline_seeds: int = Field(3, ge=2, description="seeds of the baseline for the noise floor")
    z: float = Field(2.0, gt=0, description="how many standard errors a gain must clear")
    min_floor: float = Field(1e-4, ge=0, description="absolute lower bound of the floor")
    confirm_top: int = Field(2, ge=0, description="promising candidates re-run with extra seeds per generation")
    confirm_seeds: int = Field(2, ge=1, description="extra seeds for each confirmed candidate")
