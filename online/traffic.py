"""Simulated users drive live traffic at the router, with compressed time.

Each day: World.begin_day; loop next_request -> POST router /rank (in batches) -> respond; then the
day's log, aggregated per user, goes to the collector, the router flushes its exposures and the day
is closed. A day lasts at least `seconds_per_day` wall seconds (steps are spread over it), so
Prometheus sees the experiment unfold. Deterministic: the world's draws depend only on (seed, user,
day, step) and the slates only on the models and the hash assignment, never on timing or batching.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import httpx
import numpy as np
import pandas as pd

from cambrian.errors import CambrianError


class TrafficError(CambrianError):
    pass


def user_day_rows(log) -> pd.DataFrame:
    """Per user per day from a DayLog: the world's user_days plus likes and hates from the impressions."""
    ud = log.user_days[["user_id", "day", "active", "sessions", "impressions", "clicks", "minutes"]].copy()
    imp = log.impressions
    if len(imp):
        lh = imp.groupby(["user_id", "day"])[["like", "hate"]].sum().rename(columns={"like": "likes", "hate": "hates"})
        ud = ud.merge(lh.reset_index(), on=["user_id", "day"], how="left")
    ud["likes"] = ud.get("likes", 0)
    ud["hates"] = ud.get("hates", 0)
    ud = ud.fillna({"likes": 0, "hates": 0})
    ud = ud[ud["active"] > 0]  # a missing user-day means an inactive day
    return ud.astype({"user_id": "int64", "day": "int64", "active": "int64", "sessions": "int64",
                      "impressions": "int64", "clicks": "int64", "minutes": "float64", "likes": "int64", "hates": "int64"})


def _columns(df: pd.DataFrame) -> dict[str, list]:
    return {c: df[c].tolist() for c in df.columns}


def seed_pre_period(data_dir: str | Path, collector_url: str, days: int = 14, batch_id: str = "pre-period",
                    sink: Callable[[pd.DataFrame], Any] | None = None) -> int:
    """Send the last `days` logged days of the generated world (the CUPED pre-period) to the collector, and to
    `sink` (the product's own event table in a warehouse: online/warehouse.Warehouse.write_days) first."""
    d = Path(data_dir)
    ud = pd.read_parquet(d / "user_days.parquet", columns=["day", "user_id", "active", "sessions", "impressions",
                                                           "clicks", "minutes"])
    last = int(ud["day"].max()) if len(ud) else -1
    ud = ud[ud["day"] > last - days]
    imp_path = d / "impressions.parquet"
    if imp_path.exists():
        imp = pd.read_parquet(imp_path, columns=["day", "user_id", "like", "hate"], filters=[("day", ">", last - days)])
        lh = imp.groupby(["user_id", "day"])[["like", "hate"]].sum().rename(columns={"like": "likes", "hate": "hates"})
        ud = ud.merge(lh.reset_index(), on=["user_id", "day"], how="left").fillna({"likes": 0, "hates": 0})
    ud = ud[ud["active"] > 0].astype({"user_id": "int64", "day": "int64"})
    for c in ("likes", "hates", "active", "sessions", "impressions", "clicks"):
        if c in ud:
            ud[c] = ud[c].astype("int64")
    if sink is not None:
        sink(ud)
    r = httpx.post(collector_url.rstrip("/") + "/events", json={"batch_id": batch_id, "columns": _columns(ud)},
                   timeout=120)
    if r.status_code != 200:
        raise TrafficError(f"collector rejected the pre-period: HTTP {r.status_code} {r.text[:300]}")
    return len(ud)


@dataclass
class DaySummary:
    day: int
    active_users: int
    requests: int
    ranked_users: int
    seconds: float
    arms: dict[str, int]  # slates served per arm

    def to_dict(self) -> dict:
        return self.__dict__.copy()


class TrafficDriver:
    def __init__(self, world, router_url: str, collector_url: str, *, router_admin_url: str, seconds_per_day: float = 0.0,
                 batch_size: int = 512, run_id: str = "run", timeout: float = 30.0,
                 sink: Callable[[pd.DataFrame], Any] | None = None):
        if batch_size < 1:
            raise ValueError("batch_size: must be >= 1")
        if seconds_per_day < 0:
            raise ValueError("seconds_per_day: must be >= 0")
        self.world = world
        self.router = router_url.rstrip("/")
        self.router_admin = router_admin_url.rstrip("/")  # its /flush: never on the port users reach
        self.collector = collector_url.rstrip("/")
        self.seconds_per_day, self.batch_size, self.run_id = seconds_per_day, batch_size, run_id
        self.sink = sink  # the product's own event table (a warehouse), written before the day closes
        self.http = httpx.Client(timeout=timeout)

    def close(self) -> None:
        self.http.close()

    def _post(self, url: str, payload: dict, what: str, retries: int = 3) -> dict:
        last = None
        for attempt in range(retries):
            try:
                r = self.http.post(url, json=payload)
                if r.status_code == 200:
                    return r.json()
                last = f"HTTP {r.status_code}: {r.text[:300]}"
                if r.status_code == 400:
                    break
            except httpx.HTTPError as exc:
                last = str(exc)
            time.sleep(0.2 * (attempt + 1))
        raise TrafficError(f"{what} failed: {last}")

    def rank(self, user_ids: np.ndarray, candidates: np.ndarray, k: int, day: int) -> tuple[np.ndarray, list[str]]:
        slates, arms = [], []
        for lo in range(0, len(user_ids), self.batch_size):
            hi = lo + self.batch_size
            body = self._post(self.router + "/rank",
                              {"user_ids": user_ids[lo:hi].tolist(), "candidates": candidates[lo:hi].tolist(),
                               "k": k, "day": day}, "router /rank")
            slates.extend(body["slates"])
            arms.extend(body["arms"])
        return np.asarray(slates, dtype=np.int64).reshape(len(user_ids), k), arms

    def run_day(self) -> DaySummary:
        t0 = time.monotonic()
        w = self.world
        d = w.day
        self._post(self.collector + "/clock", {"day": d}, "collector /clock")
        day = w.begin_day()
        max_steps = w.params.max_steps_per_day
        requests = ranked = 0
        arms: dict[str, int] = {}
        while (req := day.next_request()) is not None:
            if self.seconds_per_day:  # spread the steps over the day
                wait = t0 + self.seconds_per_day * req.step / max_steps - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
            slates, served = self.rank(req.user_ids, req.candidates, req.slate_size, d)
            day.respond(slates)
            requests += 1
            ranked += len(req.user_ids)
            for a in served:
                arms[a] = arms.get(a, 0) + 1
        log = day.finish()
        rows = user_day_rows(log)
        self._post(self.collector + "/events", {"batch_id": f"{self.run_id}:day{d}", "columns": _columns(rows)},
                   "collector /events")
        self._post(self.router_admin + "/flush", {}, "router /flush")
        if self.sink is not None:  # before the close: the collector's SQL metrics read the day there
            self.sink(rows)
        self._post(self.collector + "/close_day", {"day": d}, "collector /close_day")
        rest = t0 + self.seconds_per_day - time.monotonic()
        if rest > 0:
            time.sleep(rest)
        return DaySummary(d, int(log.user_days["active"].sum()), requests, ranked, time.monotonic() - t0, arms)
