"""A deterministic stand-in for a model bundle, served by the real ModelServer in the online tests."""

from __future__ import annotations

import numpy as np


class ModScorer:
    """score = -((item * a + user) mod 97): deterministic, and a different ranking per `a` (one per arm)."""

    def __init__(self, a: int):
        self.a = a

    def score(self, user_ids, candidates):
        return -((candidates * self.a + user_ids[:, None]) % 97).astype(np.float32)
