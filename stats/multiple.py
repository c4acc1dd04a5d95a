"""Multiple-comparison adjustments returning adjusted p-values in the input order.

Holm or Bonferroni (family-wise) across treatment arms sharing one control; Benjamini-Hochberg
(false discovery rate) across secondary metrics. Adjusting always-valid p-values keeps them valid."""

from __future__ import annotations

from typing import Sequence

import numpy as np


def _as_p(p: Sequence[float]) -> np.ndarray:
    arr = np.asarray(p, dtype=float).ravel()
    if np.any(~np.isfinite(arr)) or np.any((arr < 0) | (arr > 1)):
        raise ValueError(f"p-values must be in [0, 1], got {list(arr)}")
    return arr


def bonferroni(p: Sequence[float]) -> list[float]:
    arr = _as_p(p)
    return list(np.minimum(1.0, arr * arr.size))


def holm(p: Sequence[float]) -> list[float]:
    """Holm step-down: the k-th smallest p times (m − k + 1), made monotone."""
    arr = _as_p(p)
    m = arr.size
    if m == 0:
        return []
    order = np.argsort(arr, kind="stable")
    adj = np.maximum.accumulate(arr[order] * (m - np.arange(m)))
    out = np.empty(m)
    out[order] = np.minimum(1.0, adj)
    return list(out)


def benjamini_hochberg(p: Sequence[float]) -> list[float]:
    """BH step-up: the k-th smallest p times m/k, made monotone from the top."""
    arr = _as_p(p)
    m = arr.size
    if m == 0:
        return []
    order = np.argsort(arr, kind="stable")
    scaled = arr[order] * m / np.arange(1, m + 1)
    adj = np.minimum.accumulate(scaled[::-1])[::-1]
    out = np.empty(m)
    out[order] = np.minimum(1.0, adj)
    return list(out)


METHODS = {"holm": holm, "bonferroni": bonferroni, "bh": benjamini_hochberg}


def adjust(p: Sequence[float], method: str) -> list[float]:
    if method not in METHODS:
        raise ValueError(f"correction must be one of {sorted(METHODS)}, got {method!r}")
    return METHODS[method](p)
