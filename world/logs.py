"""The world data directory: file names, parquet writing (deterministic bytes) and summaries."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from cambrian.errors import ConfigError

from .sim import IMPRESSION_DTYPES, USER_DAY_DTYPES, USER_TRUTH_DTYPES, WORLD_FILE
from .population import Catalogue, Users

ITEMS, USERS, IMPRESSIONS, USER_DAYS = "items.parquet", "users.parquet", "impressions.parquet", "user_days.parquet"
TRUTH_DIR = "truth"
ITEMS_TRUTH, USER_TRUTH = "items_truth.parquet", "user_truth.parquet"
OUTPUTS = (WORLD_FILE, ITEMS, USERS, IMPRESSIONS, USER_DAYS, TRUTH_DIR)

ITEM_DTYPES = {"item_id": "int32", "topic": "int16", "length_min": "float32", "thumb_intensity": "float32"}
USER_DTYPES = {"user_id": "int32", "home_topic": "int16"}

_WRITE = {"compression": "zstd", "use_dictionary": True, "write_statistics": True}


def to_table(df: pd.DataFrame) -> pa.Table:
    # no pandas metadata: the files describe themselves and stay identical across pandas versions
    return pa.Table.from_pandas(df, preserve_index=False).replace_schema_metadata(None)


def write_parquet(df: pd.DataFrame, path: Path) -> None:
    pq.write_table(to_table(df), path, **_WRITE)


class ParquetAppender:
    """Writes one row group per call, so long logs never sit in memory at once."""

    def __init__(self, path: Path, dtypes: dict[str, str]):
        self.path, self.dtypes, self._writer = path, dtypes, None

    def append(self, df: pd.DataFrame) -> None:
        table = to_table(df[list(self.dtypes)])
        if self._writer is None:
            self._writer = pq.ParquetWriter(self.path, table.schema, **_WRITE)
        if table.num_rows:
            self._writer.write_table(table)

    def close(self) -> None:
        if self._writer is None:  # nothing appended: still write a valid, empty file
            empty = pd.DataFrame({c: np.zeros(0, dtype=t) for c, t in self.dtypes.items()})
            write_parquet(empty, self.path)
        else:
            self._writer.close()


def items_frame(cat: Catalogue) -> pd.DataFrame:
    n = cat.quality.size
    return pd.DataFrame({
        "item_id": np.arange(n, dtype=np.int32), "topic": cat.dominant_topic.astype(np.int16),
        "length_min": cat.length.astype(np.float32), "thumb_intensity": cat.thumb.astype(np.float32),
    })


def items_truth_frame(cat: Catalogue) -> pd.DataFrame:
    df = pd.DataFrame({
        "item_id": np.arange(cat.quality.size, dtype=np.int32), "quality": cat.quality.astype(np.float32),
        "bait": cat.bait.astype(np.float32), "length_min": cat.length.astype(np.float32),
    })
    for t in range(cat.topics.shape[1]):
        df[f"topic_{t}"] = cat.topics[:, t].astype(np.float32)
    return df


def users_frame(users: Users) -> pd.DataFrame:
    return pd.DataFrame({
        "user_id": np.arange(users.sat0.size, dtype=np.int32), "home_topic": users.home_topic.astype(np.int16),
    })


def read_meta(data_dir: str | Path) -> dict:
    path = Path(data_dir) / WORLD_FILE
    if not path.is_file():
        raise ConfigError(f"{path} not found: not a world data directory",
                          hint="generate one with `cambrian world generate --out DIR`")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path} is not valid JSON: {exc}") from None


def summarize(impressions: pd.DataFrame, user_days: pd.DataFrame) -> dict:
    """Per-day and overall proxies and north stars of a log."""
    im = impressions
    clicks = im[im["click"] == 1]
    by_imp = im.groupby("day").agg(impressions=("click", "size"), clicks=("click", "sum"))
    by_click = clicks.groupby("day").agg(completion=("completion", "mean"), likes=("like", "mean"),
                                         skips=("skip", "mean"))
    ud = user_days
    act = ud[ud["active"] == 1]
    by_user = ud.groupby("day").agg(users=("user_id", "size"), dau=("active", "sum"), minutes=("minutes", "sum"))
    by_ret = act.groupby("day").agg(return_rate=("returned_next_day", "mean"))
    days = by_user.join(by_imp, how="left").join(by_click, how="left").join(by_ret, how="left").fillna(0.0)
    rows = []
    for day, r in days.iterrows():
        rows.append({
            "day": int(day), "dau": int(r["dau"]), "dau_frac": _r(r["dau"] / max(r["users"], 1)),
            "ctr": _r(r["clicks"] / max(r["impressions"], 1)), "completion": _r(r["completion"]),
            "minutes_per_dau": _r(r["minutes"] / max(r["dau"], 1)), "return_rate": _r(r["return_rate"]),
            "like_rate": _r(r["likes"]),
        })
    n_imp = len(im)
    overall = {
        "users": int(ud["user_id"].nunique()), "days": int(ud["day"].nunique()), "impressions": int(n_imp),
        "ctr": _r(clicks.shape[0] / max(n_imp, 1)),
        "completion": _r(clicks["completion"].mean() if len(clicks) else 0.0),
        "dau_frac": _r(ud["active"].mean() if len(ud) else 0.0),
        "minutes_per_dau": _r(ud["minutes"].sum() / max(int(ud["active"].sum()), 1)),
        "return_rate": _r(act["returned_next_day"].mean() if len(act) else 0.0),
        "like_rate": _r(clicks["like"].mean() if len(clicks) else 0.0),
        "skip_rate": _r(clicks["skip"].mean() if len(clicks) else 0.0),
    }
    return {"overall": overall, "per_day": rows}


def summarize_dir(data_dir: str | Path) -> dict:
    d = Path(data_dir)
    meta = read_meta(d)
    for name in (IMPRESSIONS, USER_DAYS):
        if not (d / name).is_file():
            raise ConfigError(f"{d / name} not found: the data directory is incomplete")
    im = pd.read_parquet(d / IMPRESSIONS, columns=["day", "click", "completion", "like", "skip"])
    ud = pd.read_parquet(d / USER_DAYS)
    out = summarize(im, ud)
    out["data_dir"] = str(d)
    out["seed"] = meta.get("seed")
    out["logging_policy"] = meta.get("logging_policy")
    return out


def _r(x) -> float:
    return round(float(x), 4)


__all__ = [
    "ITEMS", "USERS", "IMPRESSIONS", "USER_DAYS", "TRUTH_DIR", "ITEMS_TRUTH", "USER_TRUTH", "OUTPUTS",
    "ITEM_DTYPES", "USER_DTYPES", "IMPRESSION_DTYPES", "USER_DAY_DTYPES", "USER_TRUTH_DTYPES",
    "write_parquet", "ParquetAppender", "items_frame", "items_truth_frame", "users_frame", "read_meta",
    "summarize", "summarize_dir",
]
