"""Per-arm sufficient statistics: the only thing the online collector exports (to Prometheus).

Every estimator in this package works from these sums alone, so an analysis can be computed from
PromQL gauges without ever seeing a user-level row. Variances are sample variances (ddof=1).

Numerical stability: first moments are raw sums (Σy), but second moments are taken about a fixed
reference r per metric (Σ(y−r)², Σ(x−r_x)(y−r_y)), exported beside them as ``ref_y``/``ref_x``
(``ref_m``/``ref_d``). Raw Σy² − (Σy)²/n cancels to nothing when the spread is small next to the mean
(mean 1e6, sd 1); about a reference near the mean it does not. Sums that share a reference add up
(PromQL ``sum``), and a reference of 0 is the old raw-sum contract.
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
        if obj.n == 0 and value != 0 and not f.name.startswith("ref_"):
            raise ValueError(f"{name}.{f.name} must be 0 when n == 0, got {value!r}")
        object.__setattr__(obj, f.name, value)


def centered_sum(n, s_a, s_b, s_ab, r_a=0.0, r_b=0.0):
    """Σ(a−ā)(b−b̄) = Σ(a−r_a)(b−r_b) − n(ā−r_a)(b̄−r_b) from raw first moments s_a, s_b and the
    second moment s_ab taken about the references r_a, r_b; arrays broadcast.

    Differences within round-off of the two terms are set to 0, so a constant metric has exactly
    zero variance (and is reported as insufficient data) instead of a tiny noise variance."""
    with np.errstate(divide="ignore", invalid="ignore"):
        safe_n = np.where(n > 0, n, 1)
        mean_term = np.where(n > 0, (s_a - n * r_a) * (s_b - n * r_b) / safe_n, 0.0)
    c = s_ab - mean_term
    tol = 1e-10 * np.maximum(np.abs(s_ab), np.abs(mean_term))
    c = np.where(np.abs(c) <= tol, 0.0, c)
    return float(c) if np.ndim(c) == 0 else c


def pooled_centered_sum(n1, a1, b1, c1, n2, a2, b2, c2):
    """Centered sum of two groups pooled, from each group's centered sum c and raw sums a, b
    (Chan et al.): c1 + c2 + n1·n2/n·(ā1 − ā2)(b̄1 − b̄2). Needs no common reference."""
    n = n1 + n2
    with np.errstate(divide="ignore", invalid="ignore"):
        between = np.where((n1 > 0) & (n2 > 0),
                           n1 * n2 / np.where(n > 0, n, 1) * (a1 / np.where(n1 > 0, n1, 1) - a2 / np.where(n2 > 0, n2, 1))
                           * (b1 / np.where(n1 > 0, n1, 1) - b2 / np.where(n2 > 0, n2, 1)), 0.0)
    return c1 + c2 + between


def reference(values: Any) -> float:
    """A reference for shifted second moments: the mean rounded to 3 significant digits (0 when empty).

    Any value near the mean keeps the sums stable; rounding makes it repeat from look to look."""
    v = np.asarray(values, dtype=float)
    if v.size == 0:
        return 0.0
    m = float(v.mean())
    return 0.0 if m == 0 or not math.isfinite(m) else float(f"{m:.3g}")


def _rebase(n, s_a, s_b, s_ab, r_a, r_b, new_a, new_b):
    """Σ(a−new_a)(b−new_b) from Σ(a−r_a)(b−r_b) and the raw first moments (exact algebra)."""
    da, db = r_a - new_a, r_b - new_b
    return s_ab + db * (s_a - n * r_a) + da * (s_b - n * r_b) + n * da * db


def _shifted(a: np.ndarray, b: np.ndarray, r_a: float, r_b: float) -> float:
    return float((a - r_a) @ (b - r_b))


@dataclass(frozen=True)
class SufficientStats:
    """n users with outcome Y and pre-period covariate X (X = 0 when there is no covariate).

    sum_y, sum_x are raw sums; sum_y2 = Σ(y−ref_y)², sum_x2 = Σ(x−ref_x)², sum_xy = Σ(x−ref_x)(y−ref_y)."""

    n: int = 0
    sum_y: float = 0.0
    sum_y2: float = 0.0
    sum_x: float = 0.0
    sum_x2: float = 0.0
    sum_xy: float = 0.0
    ref_y: float = 0.0
    ref_x: float = 0.0

    def __post_init__(self) -> None:
        _check_sums(self, ("sum_y2", "sum_x2"))

    @classmethod
    def from_arrays(cls, y: Any, x: Any = None, *, ref_y: float | None = None,
                    ref_x: float | None = None) -> "SufficientStats":
        """Sums of the arrays; references default to ``reference()`` of each (pass shared ones for
        sums that will be added together, e.g. every arm and shard of one metric)."""
        y = np.asarray(y, dtype=float).ravel()
        x = np.zeros_like(y) if x is None else np.asarray(x, dtype=float).ravel()
        if x.shape != y.shape:
            raise ValueError(f"x has {x.size} values but y has {y.size}")
        ry = reference(y) if ref_y is None else float(ref_y)
        rx = reference(x) if ref_x is None else float(ref_x)
        return cls(n=int(y.size), sum_y=float(y.sum()), sum_y2=_shifted(y, y, ry, ry), sum_x=float(x.sum()),
                   sum_x2=_shifted(x, x, rx, rx), sum_xy=_shifted(x, y, rx, ry), ref_y=ry, ref_x=rx)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "SufficientStats":
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"SufficientStats: unknown field(s) {sorted(unknown)}")
        return cls(**d)

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    def rebased(self, ref_y: float, ref_x: float) -> "SufficientStats":
        """The same sums with the second moments taken about new references."""
        n, sy, sx, ry, rx = self.n, self.sum_y, self.sum_x, self.ref_y, self.ref_x
        return SufficientStats(n, sy, _rebase(n, sy, sy, self.sum_y2, ry, ry, ref_y, ref_y), sx,
                               _rebase(n, sx, sx, self.sum_x2, rx, rx, ref_x, ref_x),
                               _rebase(n, sx, sy, self.sum_xy, rx, ry, ref_x, ref_y), ref_y, ref_x)

    def merge(self, other: "SufficientStats") -> "SufficientStats":
        """Sums of both groups, about self's references (other's are rebased when they differ)."""
        if not isinstance(other, SufficientStats):
            raise TypeError(f"can only merge SufficientStats, got {type(other).__name__}")
        if self.n == 0:
            return other
        o = other if (other.ref_y, other.ref_x) == (self.ref_y, self.ref_x) else other.rebased(self.ref_y, self.ref_x)
        return SufficientStats(self.n + o.n, self.sum_y + o.sum_y, self.sum_y2 + o.sum_y2, self.sum_x + o.sum_x,
                               self.sum_x2 + o.sum_x2, self.sum_xy + o.sum_xy, self.ref_y, self.ref_x)

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
        return max(self._sample(centered_sum(self.n, self.sum_y, self.sum_y, self.sum_y2, self.ref_y, self.ref_y)), 0.0)

    @property
    def var_x(self) -> float:
        return max(self._sample(centered_sum(self.n, self.sum_x, self.sum_x, self.sum_x2, self.ref_x, self.ref_x)), 0.0)

    @property
    def cov_xy(self) -> float:
        return self._sample(centered_sum(self.n, self.sum_x, self.sum_y, self.sum_xy, self.ref_x, self.ref_y))


@dataclass(frozen=True)
class RatioStats:
    """n users with numerator M and denominator D per user (e.g. clicks and impressions).

    sum_m, sum_d are raw sums; the second moments are about ref_m and ref_d (see SufficientStats)."""

    n: int = 0
    sum_m: float = 0.0
    sum_d: float = 0.0
    sum_m2: float = 0.0
    sum_d2: float = 0.0
    sum_md: float = 0.0
    ref_m: float = 0.0
    ref_d: float = 0.0

    def __post_init__(self) -> None:
        _check_sums(self, ("sum_m2", "sum_d2"))

    @classmethod
    def from_arrays(cls, m: Any, d: Any, *, ref_m: float | None = None,
                    ref_d: float | None = None) -> "RatioStats":
        m = np.asarray(m, dtype=float).ravel()
        d = np.asarray(d, dtype=float).ravel()
        if m.shape != d.shape:
            raise ValueError(f"d has {d.size} values but m has {m.size}")
        rm = reference(m) if ref_m is None else float(ref_m)
        rd = reference(d) if ref_d is None else float(ref_d)
        return cls(n=int(m.size), sum_m=float(m.sum()), sum_d=float(d.sum()), sum_m2=_shifted(m, m, rm, rm),
                   sum_d2=_shifted(d, d, rd, rd), sum_md=_shifted(m, d, rm, rd), ref_m=rm, ref_d=rd)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "RatioStats":
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"RatioStats: unknown field(s) {sorted(unknown)}")
        return cls(**d)

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    def rebased(self, ref_m: float, ref_d: float) -> "RatioStats":
        n, sm, sd, rm, rd = self.n, self.sum_m, self.sum_d, self.ref_m, self.ref_d
        return RatioStats(n, sm, sd, _rebase(n, sm, sm, self.sum_m2, rm, rm, ref_m, ref_m),
                          _rebase(n, sd, sd, self.sum_d2, rd, rd, ref_d, ref_d),
                          _rebase(n, sm, sd, self.sum_md, rm, rd, ref_m, ref_d), ref_m, ref_d)

    def merge(self, other: "RatioStats") -> "RatioStats":
        if not isinstance(other, RatioStats):
            raise TypeError(f"can only merge RatioStats, got {type(other).__name__}")
        if self.n == 0:
            return other
        o = other if (other.ref_m, other.ref_d) == (self.ref_m, self.ref_d) else other.rebased(self.ref_m, self.ref_d)
        return RatioStats(self.n + o.n, self.sum_m + o.sum_m, self.sum_d + o.sum_d, self.sum_m2 + o.sum_m2,
                          self.sum_d2 + o.sum_d2, self.sum_md + o.sum_md, self.ref_m, self.ref_d)

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
        return max(self._sample(centered_sum(self.n, self.sum_m, self.sum_m, self.sum_m2, self.ref_m, self.ref_m)), 0.0)

    @property
    def var_d(self) -> float:
        return max(self._sample(centered_sum(self.n, self.sum_d, self.sum_d, self.sum_d2, self.ref_d, self.ref_d)), 0.0)

    @property
    def cov_md(self) -> float:
        return self._sample(centered_sum(self.n, self.sum_m, self.sum_d, self.sum_md, self.ref_m, self.ref_d))
