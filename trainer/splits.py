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

    def batches(self, epoch: int, batch_size: int, seed: int, start_step: int = 0, device=None):
        """The epoch's batches from `start_step` on: one permutation of all rows (trainer/rows.py streams a
        split too long to hold). The permutation is RowGroupStream's for a file that fits its buffer (its first
        window), so rows held here train exactly as the loop's streamed ones. With a torch `device` the rows
        are copied there once per epoch and batches are gathered there (tensors)."""
        from cambrian.trainer.rows import to_device, window_order

        order = window_order(seed, epoch, 0, len(self))
        features, label, weight = self.features, self.label, self.weight
        if device is not None:
            features = {k: to_device(v, device) for k, v in features.items()}
            label, weight, order = to_device(label, device), to_device(weight, device), to_device(order, device)
        for start in range(start_step * batch_size, len(order), batch_size):
            index = order[start:start + batch_size]
            yield {k: _take(v, index) for k, v in features.items()}, _take(label, index), _take(weight, index)


def _take(values, index):
    """Rows `index` of a numpy array or (index_select: faster than indexing) of a tensor."""
    return values[index] if isinstance(values, np.ndarray) else values.index_select(0, index)


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
