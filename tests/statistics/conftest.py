import numpy as np
import pytest

from cambrian.stats import SufficientStats


@pytest.fixture(scope="session")
def make_arm():
    """Sums for n users with Y = base + effect + ρX + noise (unit variance), seeded."""

    def make(n: int, effect: float = 0.0, *, rho: float = 0.7, base: float = 10.0, seed: int = 0,
             sd: float = 1.0) -> SufficientStats:
        rng = np.random.default_rng(seed)
        x = rng.standard_normal(n)
        y = base + effect + sd * (rho * x + np.sqrt(1 - rho**2) * rng.standard_normal(n))
        return SufficientStats.from_arrays(y, x)

    return make
