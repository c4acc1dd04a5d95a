"""Per-arm sufficient statistics: the only thing the online collector exports (to Prometheus).

Every estimator in this package works from these sums alone, so an analysis can be computed from
PromQL gauges without ever seeing a user-level row. Variances are sample variances (ddof=1).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping

import numpy as np


class InsufficientData(ValueError):
    """The sums are valid but cannot support an estimate yet (n < 2, zero variance, zero mean...).

    The decision rule maps this to ``continue``; it never leads to a promotion."""


def _check_sums(obj: Any, square_fields: tuple[str, ...]) -> None:
    name = type(obj).__name__
    n = obj.n
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        if isinstance(n, float) and n.is_integer():
            object.__setattr__(obj, "n", int(n))  # Prometheus gauges are floats
        else:
            raise ValueError(f"{name}.n must be a whole number of users, got {n!r}")
    else:
        object.__setattr__(obj, "n", int(n))
    if obj.n < 0:
        raise ValueError(f"{name}.n must be >= 0, got {obj.n}")
    for f in fields(obj):
        if f.name == "n":
            continue
        value = getattr(obj, f.name)
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{name}.{f.name} must be a number, got {value!r}") from None
        if not math.isfinite(value):
            raise ValueError(f"{name}.{f.name} must be finite, got {value!r}")
        if f.name in square_fields and value < 0:
            raise ValueError(f"{name}.{f.name} is a sum of squares and must be >= 0, got {value!r}")
        if obj.n == 0 and value != 0:
            raise ValueError(f"{name}.{f.name} must be 0 when n == 0, got {value!r}")
        object.__setattr__(obj, f.name, value)


def centered_sum(n, s_a, s_b, s_ab):
    """Σ(a−ā)(b−b̄) = Σab − ΣaΣb/n from raw sums; arrays broadcast.

    Differences within round-off of the two terms are set to 0, so a constant metric has exactly
    zero variance (and is reported as insufficient data) instead of a tiny noise variance."""
    with np.errstate(divide="ignore", invalid="ignore"):
        mean_term = np.where(n > 0, s_a * s_b / np.where(n > 0, n, 1), 0.0)
    c = s_ab - mean_term
    tol = 1e-10 * np.maximum(np.abs(s_ab), np.abs(mean_term))
    c = np.where(np.abs(c) <= tol, 0.0, c)
    return float(c) if np.ndim(c) == 0 else c


def _centered(n: int, s_a: float, s_b: float, s_ab: float) -> float:
    return centered_sum(n, s_a, s_b, s_ab)


@dataclass(frozen=True)
class SufficientStats:
    """n users with outcome Y and pre-period covariate X (X = 0 when there is no covariate)."""

    n: int = 0
    sum_y: float = 0.0
    sum_y2: float = 0.0
    sum_x: float = 0.0
    sum_x2: float = 0.0
    sum_xy: float = 0.0

    def __post_init__(self) -> None:
        _check_sums(self, ("sum_y2", "sum_x2"))

    @classmethod
    def from_arrays(cls, y: Any, x: Any = None) -> "SufficientStats":
        y = np.asarray(y, dtype=float).ravel()
        x = np.zeros_like(y) if x is None else np.asarray(x, dtype=float).ravel()
        if x.shape != y.shape:
            raise ValueError(f"x has {x.size} values but y has {y.size}")
        return cls(n=int(y.size), sum_y=float(y.sum()), sum_y2=float(y @ y), sum_x=float(x.sum()),
                   sum_x2=float(x @ x), sum_xy=float(x @ y))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "SufficientStats":
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"SufficientStats: unknown field(s) {sorted(unknown)}")
        return cls(**d)

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    def merge(self, other: "SufficientStats") -> "SufficientStats":
        if not isinstance(other, SufficientStats):
            raise TypeError(f"can only merge SufficientStats, got {type(other).__name__}")
        return SufficientStats(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))

    __add__ = merge

    @property
    def mean_y(self) -> float:
        return self.sum_y / self.n if self.n else 0.0

    @property
    def mean_x(self) -> float:
        return self.sum_x / self.n if self.n else 0.0

    def _sample(self, c: float) -> float:
        return c / (self.n - 1) if self.n > 1 else 0.0

    @property
    def var_y(self) -> float:
        return max(self._sample(_centered(self.n, self.sum_y, self.sum_y, self.sum_y2)), 0.0)

    @property
    def var_x(self) -> float:
        return max(self._sample(_centered(self.n, self.sum_x, self.sum_x, self.sum_x2)), 0.0)

    @property
    def cov_xy(self) -> float:
        return self._sample(_centered(self.n, self.sum_x, self.sum_y, self.sum_xy))


@dataclass(frozen=True)
class RatioStats:
    """n users with numerator M and denominator D per user (e.g. clicks and impressions)."""

    n: int = 0
    sum_m: float = 0.0
    sum_d: float = 0.0
    sum_m2: float = 0.0
    sum_d2: float = 0.0
    sum_md: float = 0.0

    def __post_init__(self) -> None:
        _check_sums(self, ("sum_m2", "sum_d2"))

    @classmethod
    def from_arrays(cls, m: Any, d: Any) -> "RatioStats":
        m = np.asarray(m, dtype=float).ravel()
        d = np.asarray(d, dtype=float).ravel()
        if m.shape != d.shape:
            raise ValueError(f"d has {d.size} values but m has {m.size}")
        return cls(n=int(m.size), sum_m=float(m.sum()), sum_d=float(d.sum()), sum_m2=float(m @ m),
                   sum_d2=float(d @ d), sum_md=float(m @ d))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "RatioStats":
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"RatioStats: unknown field(s) {sorted(unknown)}")
        return cls(**d)

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    def merge(self, other: "RatioStats") -> "RatioStats":
        if not isinstance(other, RatioStats):
            raise TypeError(f"can only merge RatioStats, got {type(other).__name__}")
        return RatioStats(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))

    __add__ = merge

    @property
    def mean_m(self) -> float:
        return self.sum_m / self.n if self.n else 0.0

    @property
    def mean_d(self) -> float:
        return self.sum_d / self.n if self.n else 0.0

    def _sample(self, c: float) -> float:
        return c / (self.n - 1) if self.n > 1 else 0.0

    @property
    def var_m(self) -> float:
        return max(self._sample(_centered(self.n, self.sum_m, self.sum_m, self.sum_m2)), 0.0)

    @property
    def var_d(self) -> float:
        return max(self._sample(_centered(self.n, self.sum_d, self.sum_d, self.sum_d2)), 0.0)

    @property
    def cov_md(self) -> float:
        return self._sample(_centered(self.n, self.sum_m, self.sum_d, self.sum_md))
