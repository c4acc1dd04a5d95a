"""User-sticky arm assignment (pure: no I/O).

A user's bucket is a deterministic hash of (salt, user id) into 10,000 buckets. Each treatment owns a
fixed *slot* of the bucket space (treatment i of K: buckets [i*S, (i+1)*S) with S = 10000 // K) and
occupies the first ``weight * 100`` buckets of its slot; every other bucket is control's. So:

* the same weights always give the same arm (stickiness, also across restarts);
* raising a treatment's weight only moves users from control into that treatment, lowering it only
  moves them back to control, and no user ever moves between two treatments;
* the expected share of each arm is exactly its weight.

The order of the treatments fixes their slots, so it must not change during an experiment.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable, Mapping, Sequence

if TYPE_CHECKING:
    import numpy as np


N_BUCKETS = 10_000


def treatment_weight_error(weights: Sequence[int], names: Sequence[str] = ()) -> str | None:
    """The one rule for A/B/n weights (control first, then K treatments), shared by the router, the Rollout
    model and the CRD's CEL rules: the control keeps some traffic until a full launch, and each treatment owns
    a slot of 100/K percent of the buckets, so it may take at most 100/K percent (a full launch at 100
    excepted). Returns what is wrong, naming the arm as weights.NAME (or by position), or None."""
    arms = list(names) if len(names) == len(weights) else ["control", *(f"treatment {i}" for i in range(1, len(weights)))]
    k = len(weights) - 1
    if weights and weights[0] == 0 and 100 not in weights[1:]:
        return f"weights.{arms[0]}: 0% while no treatment is fully launched leaves nothing to compare with"
    for arm, w in zip(arms[1:], weights[1:]):
        if w * k > 100 and w != 100:
            return (f"weights.{arm}: {w}% exceeds this treatment's maximum of {100 / k:g}% with {k} treatments "
                    "(each owns 1/K of the traffic; only a full launch at 100% may exceed it)")
    return None


@functools.lru_cache(maxsize=1 << 20)  # the router sees the same users again and again
def _bucket(user_id: int, salt: str) -> int:
    digest = hashlib.blake2b(f"{salt}:{user_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % N_BUCKETS


def bucket(user_id: int, salt: str) -> int:
    """The bucket (0..9999) of one user under a salt."""
    return _bucket(int(user_id), salt)


def buckets(user_ids: Iterable[int], salt: str) -> np.ndarray:
    import numpy as np  # here: the operator validates ramps with this module and needs no numpy

    return np.fromiter((bucket(u, salt) for u in user_ids), dtype=np.int64)


@dataclass(frozen=True)
class Assignment:
    """An immutable assignment: control arm, ordered treatments, integer weights summing to 100."""

    salt: str
    control: str
    treatments: tuple[str, ...]
    weights: Mapping[str, int]

    @classmethod
    def create(cls, salt: str, control: str, treatments: Sequence[str], weights: Mapping[str, int | float]) -> "Assignment":
        if not salt:
            raise ValueError("salt: must be a non-empty string")
        arms = [control, *treatments]
        if len(set(arms)) != len(arms):
            raise ValueError(f"arms: names must be unique, got {arms}")
        if not treatments:
            raise ValueError("treatments: at least one treatment arm is required")
        unknown = set(weights) - set(arms)
        if unknown:
            raise ValueError(f"weights: unknown arm(s) {sorted(unknown)}; arms are {arms}")
        clean: dict[str, int] = {}
        for arm in arms:
            w = weights.get(arm, 0)
            if isinstance(w, bool) or not isinstance(w, (int, float)) or w != int(w) or not 0 <= w <= 100:
                raise ValueError(f"weights.{arm}: must be an integer between 0 and 100, got {w!r}")
            clean[arm] = int(w)
        if sum(clean.values()) != 100:
            raise ValueError(f"weights: must sum to 100, got {sum(clean.values())} ({clean})")
        error = treatment_weight_error([clean[a] for a in arms], arms)
        if error:
            raise ValueError(error)
        return cls(salt=salt, control=control, treatments=tuple(treatments), weights=clean)

    @property
    def arms(self) -> tuple[str, ...]:
        return (self.control, *self.treatments)

    def with_weights(self, weights: Mapping[str, int | float]) -> "Assignment":
        return Assignment.create(self.salt, self.control, self.treatments, weights)

    def arm_of_bucket(self, b: int) -> str:
        slot = N_BUCKETS // len(self.treatments)
        for arm in self.treatments:
            if self.weights[arm] == 100:
                return arm
        i = b // slot
        if i < len(self.treatments):
            arm = self.treatments[i]
            if b - i * slot < self.weights[arm] * 100:
                return arm
        return self.control

    def arm_of(self, user_id: int) -> str:
        return self.arm_of_bucket(bucket(user_id, self.salt))

    def arm_indices(self, user_ids: Sequence[int]) -> np.ndarray:
        """Vectorised: index into ``self.arms`` for each user (0 = control)."""
        import numpy as np

        b = buckets(user_ids, self.salt)
        out = np.zeros(len(b), dtype=np.int64)
        for i, arm in enumerate(self.treatments):
            w = self.weights[arm]
            if w == 100:
                out[:] = i + 1
                return out
        slot = N_BUCKETS // len(self.treatments)
        for i, arm in enumerate(self.treatments):
            lo = i * slot
            mask = (b >= lo) & (b < lo + self.weights[arm] * 100)
            out[mask] = i + 1
        return out

    def arm_index_list(self, user_ids: Sequence[int]) -> list[int]:
        """Like arm_indices, as a list; pure Python for small batches (numpy's fixed cost dominates there)."""
        if len(user_ids) > 64:
            return self.arm_indices(user_ids).tolist()
        index = {arm: i for i, arm in enumerate(self.arms)}
        return [index[self.arm_of_bucket(_bucket(int(u), self.salt))] for u in user_ids]
