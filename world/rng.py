"""Counter-based random numbers: every draw is a pure function of its key.

A draw for a user depends only on (seed, stream, user id, day, step, slot), so simulating any subset
of users gives each of them exactly the draws it would get in the full population (common random
numbers across A/B arms), and nothing depends on the order in which draws are made.
"""

from __future__ import annotations

import numpy as np
from scipy import special

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31 = np.uint64(30), np.uint64(27), np.uint64(31)
_S11 = np.uint64(11)

# One stream id per purpose, so that draws for different purposes never collide.
ITEM, USER, RETURN, SESSIONS, BUDGET, CANDIDATES, CLICK, COMPLETION, LEAVE, LIKE, HATE, PERM = range(1, 13)


def mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 step on a uint64 array (wrapping arithmetic)."""
    z = np.asarray(x, dtype=np.uint64) + _GOLDEN
    z = (z ^ (z >> _S30)) * _M1
    z = (z ^ (z >> _S27)) * _M2
    return z ^ (z >> _S31)


def key(*parts: np.ndarray | int) -> np.ndarray:
    """Hash a tuple of integer arrays (broadcast together) into one uint64 key per element."""
    arrays = np.broadcast_arrays(*[np.asarray(p) for p in parts])
    h = np.zeros(arrays[0].shape, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for a in arrays:
            h = mix(h ^ a.astype(np.int64).astype(np.uint64))
    return h


def uniform(h: np.ndarray) -> np.ndarray:
    """Keys -> floats strictly inside (0, 1)."""
    return ((h >> _S11).astype(np.float64) + 0.5) * (1.0 / 9007199254740992.0)


def sub(h: np.ndarray, slot: np.ndarray | int) -> np.ndarray:
    """Derive the key of a slot (a position, a topic ...) from a parent key."""
    with np.errstate(over="ignore"):
        return mix(np.asarray(h, dtype=np.uint64) ^ np.asarray(slot).astype(np.int64).astype(np.uint64))


def normal(h: np.ndarray) -> np.ndarray:
    return special.ndtri(uniform(h))


def gamma(h: np.ndarray, shape: float) -> np.ndarray:
    """Gamma(shape, 1) by inverse CDF."""
    return special.gammaincinv(shape, uniform(h))


def beta(h: np.ndarray, a: float, b: float) -> np.ndarray:
    return special.betaincinv(a, b, uniform(h))


def poisson(h: np.ndarray, mean: float, cap: int = 64) -> np.ndarray:
    """Poisson(mean) by inverse CDF over 0..cap."""
    if mean <= 0:
        return np.zeros(np.shape(h), dtype=np.int64)
    k = np.arange(cap + 1)
    cdf = special.pdtr(k, mean)
    return np.minimum(np.searchsorted(cdf, uniform(h), side="right"), cap)


def dirichlet(h: np.ndarray, conc: float, k: int) -> np.ndarray:
    """One Dirichlet(conc * 1_k) vector per key: [n] keys -> [n, k]."""
    g = gamma(sub(h[:, None], np.arange(k)[None, :]), conc)
    g = np.maximum(g, 1e-300)
    return g / g.sum(axis=1, keepdims=True)
