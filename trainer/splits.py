"""The rows a contained step works on (Split, TrainingSet) and the written training rows' count (Written).

Numpy only, so that the sandboxed trainer and predictor, which import these, do not pay for pandas or DuckDB
(trainer/data.py, the trusted side that prepares the rows, keeps those).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

    from cambrian.trainer.features import Catalogue, FeatureSpec


@dataclass
class Split:
    features: dict[str, np.ndarray]
    label: np.ndarray  # float32
    weight: np.ndarray  # float32
    signals: pd.DataFrame | None = field(repr=False)  # raw logged signals, for the loss-independent proxies

    def __len__(self) -> int:
        return len(self.label)

    def head(self, n: int) -> "Split":
        return Split({k: v[:n] for k, v in self.features.items()}, self.label[:n], self.weight[:n], None)

    def batches(self, epoch: int, batch_size: int, seed: int, start_step: int = 0):
        """The epoch's batches from `start_step` on: one permutation of all rows (trainer/rows.py streams a
        split too long to hold). The permutation is RowGroupStream's for a file that fits its buffer (its first
        window), so rows held here train exactly as the loop's streamed ones."""
        from cambrian.trainer.rows import window_order

        order = window_order(seed, epoch, 0, len(self))
        for start in range(start_step * batch_size, len(order), batch_size):
            index = order[start:start + batch_size]
            yield {k: v[index] for k, v in self.features.items()}, self.label[index], self.weight[index]


@dataclass
class Written:
    """The training rows as the trusted process wrote them for the contained trainer (trainer/rows.py): one
    Parquet file per worker, `rows` in all."""

    files: list[Path]
    rows: int

    def __len__(self) -> int:
        return self.rows


@dataclass
class TrainingSet:
    """What the contained training process gets: no held-out rows at all (spec is catalogue.spec)."""

    spec: FeatureSpec
    catalogue: Catalogue
    train: Split | Written  # the contained trainer's is a Split or a RowGroupStream (trainer/rows.py)
