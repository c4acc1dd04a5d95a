"""The static world: catalogue and users, drawn from the seed by counter-based hashing.

Item j and user i depend only on (seed, id), so a world with more users or a subset of users
contains the very same people.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import rng
from .params import WorldParams


@dataclass(frozen=True)
class Catalogue:
    topics: np.ndarray  # [n_items, K] topic mix (Dirichlet), rows sum to 1
    unit: np.ndarray  # [n_items, K] topic mix with unit L2 norm (for cosine affinity)
    quality: np.ndarray  # [n_items] true long-term value in (0, 1)   (hidden)
    bait: np.ndarray  # [n_items] clickbait in [0, 1]                (hidden)
    length: np.ndarray  # [n_items] minutes
    thumb: np.ndarray  # [n_items] thumbnail intensity: observable, noisy proxy of bait
    perm: np.ndarray  # [n_items] fixed shuffle used by the retrieval stage
    units_mod_n: np.ndarray  # strides coprime with n_items (retrieval walks)
    unit_t: np.ndarray  # [K, n_items] contiguous transposes: per-topic gathers are cheap
    topics_t: np.ndarray

    @property
    def dominant_topic(self) -> np.ndarray:
        return self.topics.argmax(axis=1)


@dataclass(frozen=True)
class Users:
    interest: np.ndarray  # [n_users, K] unit-norm interest vectors (initial)
    sat0: np.ndarray  # [n_users] initial latent satisfaction (hidden)
    bait_sus: np.ndarray  # [n_users] multiplier of th_bait (1 without heterogeneity)
    habit: np.ndarray  # [n_users] offset of the return logit (heavy vs light users)
    budget_mult: np.ndarray  # [n_users] multiplier of the session budget

    @property
    def home_topic(self) -> np.ndarray:
        return self.interest.argmax(axis=1)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def make_catalogue(seed: int, p: WorldParams) -> Catalogue:
    ids = np.arange(p.n_items)
    base = rng.key(seed, rng.ITEM, ids)
    topics = rng.dirichlet(rng.sub(base, 0), p.topic_conc, p.n_topics)
    quality = rng.beta(rng.sub(base, 1), p.q_a, p.q_b)
    bait = np.clip(rng.beta(rng.sub(base, 2), p.bait_a, p.bait_b) + p.bait_quality_corr * (0.5 - quality), 0.0, 1.0)
    length = np.exp(p.len_mu + p.len_sigma * rng.normal(rng.sub(base, 3)))
    thumb = bait + p.thumb_noise * rng.normal(rng.sub(base, 4))
    perm = np.argsort(rng.key(seed, rng.PERM, ids), kind="stable")
    strides = np.arange(1, p.n_items, dtype=np.int64)
    units = strides[np.gcd(strides, p.n_items) == 1]
    unit = _unit(topics)
    return Catalogue(topics, unit, quality, bait, length, thumb, perm, units,
                     np.ascontiguousarray(unit.T), np.ascontiguousarray(topics.T))


def make_users(seed: int, p: WorldParams, n_users: int | None = None) -> Users:
    n = p.n_users if n_users is None else n_users
    base = rng.key(seed, rng.USER, np.arange(n))
    interest = _unit(rng.dirichlet(rng.sub(base, 0), p.interest_conc, p.n_topics))
    sat0 = p.sat0_sd * rng.normal(rng.sub(base, 1))
    bait_sus = _lognormal(rng.sub(base, 2), p.bait_sus_sd, n)
    habit = p.habit_sd * rng.normal(rng.sub(base, 3))
    return Users(interest, sat0, bait_sus, habit, _lognormal(rng.sub(base, 4), p.budget_user_sd, n))


def _lognormal(h: np.ndarray, sd: float, n: int) -> np.ndarray:
    """Mean-one multipliers; exactly 1 without heterogeneity (no draw perturbs the easy world)."""
    return np.exp(sd * rng.normal(h) - sd * sd / 2) if sd > 0 else np.ones(n)
