"""Oracle ranking policies that read the simulator's hidden truth.

For tests, calibration and the reference table only: they show what each objective does to the
north stars when the response model is known exactly. Candidate models never see this truth.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from cambrian.errors import ConfigError

from .sim import ScorePolicy, SlateRequest, World, sigmoid, unit_rows

POLICIES = ("random", "ctr_greedy", "watch_time", "satisfaction_aware")


def expected_response(world: World, user_ids: np.ndarray, candidates: np.ndarray) -> dict[str, np.ndarray]:
    """Per candidate, at the top position and the user's current state: p_click (vs. the no-click
    option), expected completion, expected watch minutes and expected satisfaction change."""
    p, cat, st = world.params, world.catalogue, world.state
    uid = np.asarray(user_ids)
    aff = _dot(st.interest[uid], cat.unit_t, candidates)
    fat = _dot(st.fatigue[uid], cat.topics_t, candidates)
    q, b = cat.quality[candidates], cat.bait[candidates]
    z = p.th_aff * aff + p.th_bait * world.users.bait_sus[uid, None] * b - p.th_satiation * fat
    if p.th_novelty:
        z = z + p.th_novelty * (1.0 - _dot(unit_rows(st.seen[uid]), cat.unit_t, candidates))  # sim.novelty
    p_click = sigmoid(z - p.null_logit)
    omega = sigmoid(p.w0 + p.w_aff * aff + p.w_q * (q - 0.5) - p.w_bait * b)
    watch = omega * cat.length[candidates]
    ds = p.eta_s * ((q - 0.5) + p.rho_w * (omega - 0.5) - p.lam_bait * b)
    return {"p_click": p_click, "completion": omega, "watch": watch, "ds": ds}


def _dot(user_vecs: np.ndarray, cols: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """[n, K] . [K, n_items][:, candidates] -> [n, C], one topic at a time (K is small). Cheaper than
    materialising [n, C, K], and no BLAS call: multi-threaded BLAS thrashes on a busy small machine."""
    out = user_vecs[:, 0, None] * cols[0][candidates]
    for k in range(1, cols.shape[0]):
        out += user_vecs[:, k, None] * cols[k][candidates]
    return out


def random_policy(req: SlateRequest) -> np.ndarray:
    """The retrieval stage already proposes a random set in random order: show its head."""
    return req.candidates[:, : req.slate_size]


def oracle_policy(world: World, name: str = "random", lam: float = 0.5) -> Callable[[SlateRequest], np.ndarray]:
    """A policy by name: random, ctr_greedy, watch_time, satisfaction_aware (with lam)."""
    if name == "random":
        return random_policy
    if name == "ctr_greedy":
        score = lambda u, c: expected_response(world, u, c)["p_click"]
    elif name == "watch_time":
        score = lambda u, c: (r := expected_response(world, u, c))["p_click"] * r["watch"]
    elif name == "satisfaction_aware":
        score = lambda u, c: (r := expected_response(world, u, c))["p_click"] * (r["watch"] + 100.0 * lam * r["ds"])
    else:
        raise ConfigError(f"unknown policy {name!r}; choose one of {', '.join(POLICIES)}")
    return ScorePolicy(score)


def parse_policy(spec: str) -> tuple[str, float]:
    """'satisfaction_aware' or 'satisfaction_aware:1.0' -> (name, lam)."""
    name, _, lam = spec.partition(":")
    if name not in POLICIES:
        raise ConfigError(f"unknown policy {name!r}; choose one of {', '.join(POLICIES)} (satisfaction_aware:LAMBDA)")
    try:
        value = float(lam) if lam else 0.5
    except ValueError:
        raise ConfigError(f"policy {spec!r}: lambda must be a number") from None
    return name, value
