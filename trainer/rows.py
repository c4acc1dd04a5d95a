"""The training rows as Parquet row groups: written by the trusted process, read in batches by the trainer.

A row is (user, item, label, weight); the model's other inputs are looked up by id in the catalogue
(trainer/features.py) when a batch is read, so a row stays 24 bytes on disk whatever the declared features.
Files are cut into row groups of ROW_GROUP_ROWS rows (the last one shorter). The reader:
- a file of at most `buffer` row groups (training.shuffle_row_groups) is loaded whole once and every epoch
  is one permutation of all its rows;
- a longer file streams: each epoch permutes the row groups, takes them `buffer` at a time (a window),
  permutes the window's rows and cuts consecutive batches across windows, so memory holds at most `buffer`
  row groups whatever the file's length.
Every epoch's and window's permutation comes from its own generator seeded by (seed, epoch[, window]): a run
resumed at (epoch, step) replays the same batches, and skips the windows before its step without reading them.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROW_GROUP_ROWS = 65_536
COLUMNS = pa.schema([("user", pa.int64()), ("item", pa.int64()), ("label", pa.float32()), ("weight", pa.float32())])
Batch = tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]  # features, label, weight
Columns = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # user, item, label, weight


def epoch_rng(seed: int, epoch: int, *more: int) -> np.random.Generator:
    return np.random.default_rng([seed, epoch, *more])


def window_order(seed: int, epoch: int, window: int, rows: int) -> np.ndarray:
    """The order of an epoch's `window`-th window of `rows` rows (read in file order). Rows held whole in memory
    (trainer/splits.Split) are window 0, so in-process training sees the batches the loop's stream does."""
    return epoch_rng(seed, epoch, window + 1).permutation(rows)


class RowWriter:
    """Appends rows to one Parquet file in row groups of exactly `group` rows (the last may be shorter):
    at most one row group is held here."""

    def __init__(self, path: Path, group: int | None = None):
        self.path, self.group, self.rows = path, group or ROW_GROUP_ROWS, 0
        self._writer = pq.ParquetWriter(path, COLUMNS, compression="zstd")
        self._held: list[pa.Table] = []
        self._held_rows = 0

    def write(self, user: np.ndarray, item: np.ndarray, label: np.ndarray, weight: np.ndarray) -> None:
        if not len(user):
            return
        self._held.append(pa.table([pa.array(np.asarray(c, t.to_pandas_dtype())) for c, t in
                                    zip((user, item, label, weight), COLUMNS.types)], schema=COLUMNS))
        self._held_rows += len(user)
        self.rows += len(user)
        if self._held_rows >= self.group:
            self._flush(final=False)

    def _flush(self, final: bool) -> None:
        table = pa.concat_tables(self._held).combine_chunks()
        cut = len(table) if final else len(table) // self.group * self.group
        if cut:
            self._writer.write_table(table.slice(0, cut), row_group_size=self.group)
        rest = table.slice(cut)
        self._held, self._held_rows = ([rest] if len(rest) else []), len(rest)

    def close(self) -> None:
        if self._held_rows:
            self._flush(final=True)
        self._writer.close()


def read_columns(table: pa.Table) -> Columns:
    return tuple(_numpy(table.column(f.name), f.name, np.dtype(f.type.to_pandas_dtype()))  # type: ignore[return-value]
                 for f in COLUMNS)


def _numpy(column: pa.ChunkedArray, name: str, dtype: np.dtype) -> np.ndarray:
    """A column of COLUMNS (fixed-width, no nulls: RowWriter's) as one read-only array over Arrow's buffers.
    pyarrow's own to_numpy imports pandas, 0.2-0.5 s in a fresh sandbox that otherwise never needs it."""
    if column.null_count:
        raise ValueError(f"the training rows' column {name} has missing values")
    parts = [np.frombuffer(c.buffers()[1], dtype=dtype, count=len(c), offset=c.offset * dtype.itemsize)
             for c in column.chunks if len(c)]  # an empty chunk may have no data buffer at all
    return parts[0] if len(parts) == 1 else np.concatenate(parts) if parts else np.zeros(0, dtype)


class RowGroupStream:
    """One Parquet file of training rows, read `buffer` row groups at a time (see the module docstring). Only
    ids, labels and weights are held; a batch's features are looked up in the catalogue when it is cut."""

    def __init__(self, path: Path, catalogue, buffer: int):
        self.path, self.catalogue, self.buffer = Path(path), catalogue, buffer
        meta = pq.ParquetFile(self.path).metadata
        self.group_rows = np.array([meta.row_group(i).num_rows for i in range(meta.num_row_groups)], np.int64)
        self.whole = len(self.group_rows) <= buffer  # one window: read here, kept for every epoch
        self._kept: Columns | None = None
        self._placed: _Placed | None = None  # the catalogue's copy on the device batches were last cut on
        self.most_held = 0  # the most row groups held at once (a test reads it)
        if self.whole:
            self._read(np.arange(len(self.group_rows)))

    def __len__(self) -> int:
        return int(self.group_rows.sum())

    def _read(self, groups: np.ndarray) -> Columns:
        if self._kept is not None:
            return self._kept
        self.most_held = max(self.most_held, len(groups))
        columns = read_columns(pq.ParquetFile(self.path).read_row_groups(sorted(groups.tolist())))
        if self.whole and len(groups) == len(self.group_rows):
            self._kept = columns
        return columns

    def _place(self, device) -> "_Placed":
        if self._placed is None or self._placed.device != device:
            self._placed = _Placed(self.catalogue, device)  # once per run, not per epoch
        return self._placed

    def head(self, n: int):
        from cambrian.trainer.splits import Split

        features, label, weight = _batch(self.catalogue, self._read(np.arange(min(1, len(self.group_rows)))), 0, n)
        return Split(features, label, weight, None)

    def batches(self, epoch: int, batch_size: int, seed: int, start_step: int = 0, device=None) -> Iterator[Batch]:
        """Batches `start_step`, `start_step + 1`, ... of this epoch; a batch may span two windows. With a torch
        `device`, each window's ids, labels and weights are copied there once and every batch, features
        included, is cut there (tensors): the same rows in the same order as without it."""
        placed = self._place(device) if device is not None else None
        catalogue = placed.catalogue if placed else self.catalogue
        concatenate = placed.concatenate if placed else np.concatenate
        order = epoch_rng(seed, epoch).permutation(len(self.group_rows))
        windows = [order[i:i + self.buffer] for i in range(0, len(order), self.buffer)]
        skip = start_step * batch_size  # rows of this epoch already trained on
        carry: Columns | None = None
        done = 0  # rows of the epoch before the current window
        for w, groups in enumerate(windows):
            size = int(self.group_rows[groups].sum())
            if done + size <= skip:  # wholly before the resumed step: never read
                done += size
                continue
            # rows are read in file order of the window's groups; the permutation makes the order the window's
            perm = window_order(seed, epoch, w, size)
            if done < skip:
                perm = perm[skip - done:]
            done += size
            part = tuple(c[perm] for c in self._read(groups))
            if placed:
                part = placed.columns(part)
            n, start = len(perm), 0
            if carry is not None:  # the batch that spans the window before and this one
                start = min(batch_size - len(carry[0]), n)
                carry = tuple(concatenate([a, b[:start]]) for a, b in zip(carry, part))
                if len(carry[0]) < batch_size:
                    continue
                yield _batch(catalogue, carry, 0, batch_size)
                carry = None
            full = start + (n - start) // batch_size * batch_size
            for lo in range(start, full, batch_size):
                yield _batch(catalogue, part, lo, lo + batch_size)
            carry = tuple(c[full:] for c in part) if full < n else None
        if carry is not None:
            yield _batch(catalogue, carry, 0, len(carry[0]))


def to_device(values: np.ndarray, device) -> Any:
    """A tensor of `values` on a torch device; a read-only array (a loaded catalogue) is copied first, as torch
    shares a CPU array's memory and cannot mark it read-only."""
    import torch

    values = np.ascontiguousarray(values)
    return torch.from_numpy(values if values.flags.writeable else values.copy()).to(device)


def _batch(catalogue, columns: Columns, lo: int, hi: int) -> Batch:
    user, item, label, weight = (c[lo:hi] for c in columns)
    return catalogue.features(user, item), label, weight


class _Placed:
    """A stream's batches cut on a torch device: the catalogue copied there once (a few arrays per id), each
    window's four columns once per window; nothing crosses from the host per step."""

    def __init__(self, catalogue, device):
        self.device = device
        self.catalogue = catalogue.to(device)

    def columns(self, part: Columns) -> tuple:
        return tuple(to_device(c, self.device) for c in part)

    @staticmethod
    def concatenate(parts: list) -> Any:
        import torch

        return torch.cat(parts)
