"""Model inputs from the declared features (trainer/schema.py): every declared categorical feature becomes an
id column with its own vocabulary, every declared numeric feature a standardised dense input.

A feature lives in a table keyed by the user id or by the item id (one row per id, no time column): serving
knows only those two ids, so the bundle keeps these per-id columns (the Catalogue) and looks features up by id.
Vocabularies and numeric statistics come from the training rows alone; index 0 of every vocabulary is reserved
for a value training never saw (a new category, a null, an id without a row), so serving never fails on one.
The simulated world and MovieLens are two declarations of this one path.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from cambrian.errors import ConfigError
from cambrian.trainer.schema import DataSchema

if TYPE_CHECKING:  # pandas is the trusted side's (building a catalogue), not the sandboxed steps'
    import pandas as pd

Entity = Literal["user", "item"]
RESERVED = 0  # the index of a category that training never saw
ID_FIELDS = ("user", "item")
DENSE = "dense"  # the batch key of the numeric features stacked in declared order


@dataclass(frozen=True)
class Categorical:
    name: str  # the batch key: the declared column's name
    ref: str  # table.column in the declaration
    entity: Entity
    vocabulary: tuple  # the values seen in training, sorted: value vocabulary[i] has index i + 1

    @property
    def size(self) -> int:
        return len(self.vocabulary) + 1


@dataclass(frozen=True)
class Numeric:
    name: str
    ref: str
    entity: Entity
    mean: float  # of the training rows; the model sees (value - mean) / std, a missing value as 0
    std: float


@dataclass(frozen=True)
class FeatureSpec:
    """What a model may see: the id spaces, then the declared features by name (their order is the declaration's)."""

    n_users: int
    n_items: int
    categorical: tuple[Categorical, ...] = ()
    numeric: tuple[Numeric, ...] = ()

    @property
    def fields(self) -> tuple[str, ...]:
        """The embedded fields: user, item, then each categorical feature."""
        return (*ID_FIELDS, *(c.name for c in self.categorical))

    @property
    def dense(self) -> tuple[str, ...]:
        """The numeric features, in the column order of batch["dense"]."""
        return tuple(n.name for n in self.numeric)

    @property
    def n_fields(self) -> int:
        """Field vectors of FieldEmbeddings: one per embedded field, plus the dense projection if any."""
        return len(self.fields) + (1 if self.numeric else 0)

    @property
    def inputs(self) -> tuple[str, ...]:
        """The exported program's positional inputs (batch["dense"] is rebuilt from the numeric ones)."""
        return (*self.fields, *self.dense)

    def size(self, field: str) -> int:
        """The number of embedding rows of an embedded field."""
        sizes = {"user": self.n_users, "item": self.n_items, **{c.name: c.size for c in self.categorical}}
        return sizes[field]

    def to_dict(self) -> dict:
        return {"n_users": self.n_users, "n_items": self.n_items,
                "categorical": [{"name": c.name, "ref": c.ref, "entity": c.entity, "vocabulary": list(c.vocabulary)}
                                for c in self.categorical],
                "numeric": [{"name": n.name, "ref": n.ref, "entity": n.entity, "mean": n.mean, "std": n.std}
                            for n in self.numeric]}

    @classmethod
    def from_dict(cls, d: dict) -> "FeatureSpec":
        cats = tuple(Categorical(c["name"], c["ref"], c["entity"], tuple(c["vocabulary"])) for c in d["categorical"])
        nums = tuple(Numeric(n["name"], n["ref"], n["entity"], float(n["mean"]), float(n["std"])) for n in d["numeric"])
        return cls(int(d["n_users"]), int(d["n_items"]), cats, nums)


@dataclass
class Catalogue:
    """Each feature's model input per id of its entity (codes int64, numeric values standardised float32)."""

    spec: FeatureSpec
    columns: dict[str, np.ndarray]  # or torch tensors on `device` (to())
    device: Any = None  # None: numpy arrays in this process's memory

    def to(self, device) -> "Catalogue":
        """A copy held on a torch device: features() then takes and returns tensors there, so a GPU gathers a
        batch's features itself instead of reading host memory every step."""
        import torch

        from cambrian.trainer.rows import to_device

        return Catalogue(self.spec, {k: to_device(v, device) for k, v in self.columns.items()}, torch.device(device))

    def features(self, user_ids: np.ndarray, item_ids: np.ndarray) -> dict[str, np.ndarray]:
        """The batch of (user, item) pairs of equal shape: every name of spec.inputs, and "dense"."""
        if self.device is not None:
            return self._features_on_device(user_ids, item_ids)
        ids = {"user": np.asarray(user_ids, dtype=np.int64), "item": np.asarray(item_ids, dtype=np.int64)}
        out = dict(ids)
        for f in (*self.spec.categorical, *self.spec.numeric):
            out[f.name] = self.columns[f.name][ids[f.entity]]
        n = ids["user"].shape
        out[DENSE] = (np.stack([out[name] for name in self.spec.dense], axis=-1) if self.spec.numeric
                      else np.zeros((*n, 0), np.float32))
        return out

    def _features_on_device(self, user_ids, item_ids) -> dict:
        """features() of one-dimensional int64 id tensors on this catalogue's device."""
        import torch

        out = {"user": user_ids, "item": item_ids}
        for f in (*self.spec.categorical, *self.spec.numeric):
            out[f.name] = self.columns[f.name].index_select(0, out[f.entity])
        out[DENSE] = (torch.stack([out[name] for name in self.spec.dense], dim=-1) if self.spec.numeric
                      else torch.zeros((len(user_ids), 0), dtype=torch.float32, device=self.device))
        return out


def save_catalogue(path: str | Path, catalogue: Catalogue) -> None:
    """Pickle-free: the spec as JSON text, each column as an array named by its position."""
    names = [f.name for f in (*catalogue.spec.categorical, *catalogue.spec.numeric)]
    np.savez(path, spec=np.array(json.dumps(catalogue.spec.to_dict())),
             **{f"c{i}": catalogue.columns[name] for i, name in enumerate(names)})


def load_catalogue(path: str | Path) -> Catalogue:
    with np.load(path, allow_pickle=False) as f:
        spec = FeatureSpec.from_dict(json.loads(str(f["spec"])))
        names = [c.name for c in (*spec.categorical, *spec.numeric)]
        return Catalogue(spec, {name: f[f"c{i}"] for i, name in enumerate(names)})


# ---- from a declaration ------------------------------------------------------------------------------------

def entity_of(schema: DataSchema, table: str) -> Entity:
    """Whose attribute a feature table holds: it must carry exactly one of the ids and no time column."""
    ids = schema.id_columns(table)
    if len(ids) != 1 or schema.tables[table].time is not None:
        raise ConfigError(f"table {table!r} holds features but is not keyed by {schema.user_id} alone or by "
                          f"{schema.item_id} alone (one row per id, no time column)",
                          hint="serving knows only the user and item ids; per-interaction features are not supported")
    return "user" if ids[0] == schema.user_id else "item"


def entity_table(schema: DataSchema, entity: Entity) -> str:
    """The table of a declaration that holds the given entity's features."""
    found = [t for t in schema.tables if t != schema.interactions and len(schema.id_columns(t)) == 1
             and schema.tables[t].time is None and entity_of(schema, t) == entity]
    if len(found) != 1:
        raise ConfigError(f"declaration {schema.name!r} needs exactly one table of {entity} features; found "
                          f"{', '.join(found) or 'none'}")
    return found[0]


def checked_ids(frame: pd.DataFrame, column: str, where: str) -> np.ndarray:
    """The id column as int64, refused (ConfigError naming table and column) unless integers >= 0."""
    import pandas as pd

    values = frame[column]
    if not pd.api.types.is_integer_dtype(values) or (len(values) and values.min() < 0):
        raise ConfigError(f"{where}.{column}: ids must be integers >= 0 (other ids are not supported yet)")
    return values.to_numpy(np.int64)


def _per_id(frame: pd.DataFrame, id_column: str, column: str, where: str, n: int) -> pd.Series:
    """The column's value for every id 0..n-1 (missing ids: null)."""
    import pandas as pd

    ids = checked_ids(frame, id_column, where)
    if len(np.unique(ids)) != len(ids):
        raise ConfigError(f"{where}.{id_column}: an id appears in more than one row; a feature table has one row per id")
    out = pd.Series([None] * n, dtype=object)
    out.iloc[ids] = frame[column].astype(object).to_numpy()
    return out


def id_space(schema: DataSchema, frames: dict[str, pd.DataFrame]) -> tuple[int, int]:
    """(n_users, n_items): the largest id in any declared table, plus one."""
    out = []
    for column in (schema.user_id, schema.item_id):
        top = -1
        for key, frame in frames.items():
            if column in schema.tables[key].columns and len(frame):
                top = max(top, int(checked_ids(frame, column, key).max()))
        out.append(top + 1)
    return out[0], out[1]


def build_catalogue(schema: DataSchema, frames: dict[str, pd.DataFrame], user_rows: np.ndarray,
                    item_rows: np.ndarray, n_users: int, n_items: int) -> Catalogue:
    """Each declared feature's vocabulary or statistics from the training rows, and its model input per id.
    `user_rows[i]` is how many training rows carry user id i (item_rows likewise): counts, folded while the
    rows stream past, give the same vocabularies and row-weighted statistics as the rows themselves."""
    import pandas as pd

    counts = {"user": n_users, "item": n_items}
    rows = {e: np.pad(np.asarray(c, np.float64), (0, counts[e] - len(c))) for e, c in (("user", user_rows), ("item", item_rows))}
    names: dict[str, str] = {}
    cats, nums, columns = [], [], {}
    for role in ("categorical", "numeric"):
        for ref in getattr(schema, role):
            table, _ = schema.column(ref)
            column = ref.split(".", 1)[1]
            if column in (*ID_FIELDS, DENSE) or column in names:
                raise ConfigError(f"feature {ref}: the name {column!r} is taken"
                                  + (f" by {names[column]}" if column in names else " (user, item, dense)"),
                                  hint="features are passed to models by column name: rename one column")
            names[column] = ref
            entity = entity_of(schema, table)
            id_column = schema.user_id if entity == "user" else schema.item_id
            values = _per_id(frames[table], id_column, column, table, counts[entity])
            if role == "categorical":
                seen = values.iloc[np.flatnonzero(rows[entity])]
                vocabulary = tuple(sorted({v.item() if hasattr(v, "item") else v for v in seen.dropna()}))
                index = {v: i + 1 for i, v in enumerate(vocabulary)}
                codes = values.map(lambda v: index.get(v.item() if hasattr(v, "item") else v, RESERVED))
                columns[column] = codes.to_numpy(np.int64)
                cats.append(Categorical(column, ref, entity, vocabulary))
            else:
                raw = pd.to_numeric(values, errors="coerce").to_numpy(np.float64)
                weights = np.where(np.isfinite(raw), rows[entity], 0.0)
                total = weights.sum()
                finite = np.where(weights > 0, raw, 0.0)
                mean = float((weights * finite).sum() / total) if total else 0.0
                std = float(np.sqrt((weights * (finite - mean) ** 2).sum() / total)) if total else 1.0
                std = std if std > 0 else 1.0
                columns[column] = np.nan_to_num((raw - mean) / std, nan=0.0, posinf=0.0, neginf=0.0).astype(np.float32)
                nums.append(Numeric(column, ref, entity, mean, std))
    return Catalogue(FeatureSpec(n_users, n_items, tuple(cats), tuple(nums)), columns)


def model_batch(spec: FeatureSpec, tensors: list) -> dict:
    """The dict batch a model reads, from the exported program's positional inputs (spec.inputs)."""
    import torch

    batch = dict(zip(spec.inputs, tensors))
    user = batch["user"]
    batch[DENSE] = (torch.stack([batch[name] for name in spec.dense], dim=-1) if spec.numeric
                    else torch.zeros((*user.shape, 0), dtype=torch.float32, device=user.device))
    return batch
