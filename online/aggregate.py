"""Per-user aggregation and per-arm sufficient statistics (pure: DataFrames in, sums out).

Units are users, read in the experiment's current *phase*: a phase is one set of ramp weights (the router
stamps every first exposure with the phase it was routed in; a log without phases is one phase). Within a
phase the assignment is fixed, so a user's unit is the arm of their first exposure in the phase and their
window runs from that day up to the last closed day. Reading only the current phase is what keeps a ramp
honest: when a step moves users from control into a treatment, windows that began under earlier weights
start earlier and are longer in control, and a window that opens on a day the user was routed (an active
day by construction) or ends where the user was first seen in the next arm (after inactive days by
construction) makes short windows look better and cut ones worse: an A/A test with the 10/25/50 ramp read
+13% on the step's day and -3.5% a week later that way. Only closed days count.

Metrics (the covariate X is the same metric over the pre-period, i.e. before the experiment's
first exposure; users with no pre-period history get X = 0):

| metric            | kind  | Y per unit                                   | published for                |
|-------------------|-------|----------------------------------------------|------------------------------|
| watch_minutes     | mean  | watch minutes per day in the window          | units with >= 1 closed day   |
| sessions          | mean  | sessions per day in the window               | units with >= 1 closed day   |
| ctr               | ratio | M = clicks, D = impressions in the window    | units with >= 1 closed day   |
| hate_rate         | ratio | M = hates, D = impressions in the window     | units with >= 1 closed day   |
| returned_next_day | mean  | active on the day after first exposure (0/1) | units whose day f+1 closed   |
| active_days       | mean  | active days in [f+1, f+A] (A = 7 by default) | units whose day f+A closed   |

Ratio metrics export RatioStats sums (n, sum_m, sum_d, sum_m2, sum_d2, sum_md, ref_m, ref_d); mean metrics
export SufficientStats sums (n, sum_y, sum_y2, sum_x, sum_x2, sum_xy, ref_y, ref_x). Second moments are
taken about the references (cambrian.stats.sums), which are shared by every arm of a metric so that the
arms' sums add up (pooled CUPED, PromQL sum()).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from cambrian.stats.sums import RatioStats, SufficientStats, reference

USER_DAY_COLUMNS = ("active", "sessions", "impressions", "clicks", "minutes", "likes", "hates")

MEAN_METRICS = ("watch_minutes", "sessions", "returned_next_day", "active_days")
RATIO_METRICS = ("ctr", "hate_rate")
DELAYED = {"returned_next_day", "active_days"}
MEAN_STATS = ("n", "sum_y", "sum_y2", "sum_x", "sum_x2", "sum_xy", "ref_y", "ref_x")
RATIO_STATS = ("n", "sum_m", "sum_d", "sum_m2", "sum_d2", "sum_md", "ref_m", "ref_d")


@dataclass(frozen=True)
class AggregationSettings:
    pre_days: int = 14         # covariate window before the experiment starts
    active_window: int = 7     # active_days counts days f+1..f+A


def unit_windows(exposures: pd.DataFrame, closed_day: int) -> pd.DataFrame:
    """exposures(user_id, arm, day[, phase]) -> units(user_id, arm, first, end) of the current phase (the latest
    with an exposure on a closed day), end exclusive (the day after the last closed one), closed days only."""
    e = exposures[exposures["day"] <= closed_day]
    if "phase" in e:
        e = e[e["phase"] == e["phase"].max()]
    # one unit per user: the phase's assignment is fixed (a duplicate could only come from a resent record)
    e = e.sort_values(["user_id", "day", "arm"]).drop_duplicates("user_id", keep="first")
    e = e[["user_id", "arm", "day"]].rename(columns={"day": "first"})
    return e.assign(end=closed_day + 1).reset_index(drop=True)


def _sum_days(units: pd.DataFrame, user_days: pd.DataFrame, lo: np.ndarray, hi: np.ndarray,
              columns: tuple[str, ...]) -> pd.DataFrame:
    """Per unit, the sums of `columns` over that user's days in [lo, hi)."""
    u = units[["user_id"]].assign(_unit=np.arange(len(units)), _lo=lo, _hi=hi)
    m = u.merge(user_days[["user_id", "day", *columns]], on="user_id", how="inner")
    m = m[(m["day"] >= m["_lo"]) & (m["day"] < m["_hi"])]
    sums = m.groupby("_unit")[list(columns)].sum()
    return sums.reindex(np.arange(len(units)), fill_value=0).astype(float)


def _pre_next_day_rate(user_days: pd.DataFrame, users: np.ndarray, lo: int, hi: int) -> pd.Series:
    """Per user: among active pre-period days d (with d+1 < hi), the share followed by an active d+1."""
    ud = user_days[(user_days["day"] >= lo) & (user_days["day"] < hi) & (user_days["active"] > 0)]
    active = set(zip(ud["user_id"].to_numpy().tolist(), ud["day"].to_numpy().tolist()))
    base = ud[ud["day"] + 1 < hi]
    ret = [(u, d + 1) in active for u, d in zip(base["user_id"].to_numpy().tolist(), base["day"].to_numpy().tolist())]
    rate = base.assign(ret=np.asarray(ret, dtype=float)).groupby("user_id")["ret"].mean()
    return rate.reindex(users, fill_value=0.0)


def maturity_day(metric: str, settings: AggregationSettings = AggregationSettings()) -> int:
    """The experiment day on which the first cohort's value of a delayed metric is read (0: at once)."""
    return {"returned_next_day": 1, "active_days": settings.active_window}.get(metric, 0)


def arm_statistics(exposures: pd.DataFrame, user_days: pd.DataFrame, closed_day: int,
                   settings: AggregationSettings = AggregationSettings()) -> dict[str, dict[str, dict[str, float]]]:
    """{metric: {arm: {stat: value}}} for one experiment. `user_days` needs user_id, day and USER_DAY_COLUMNS
    (missing user-days mean an inactive day with zeros)."""
    if exposures.empty:
        return {}
    ud = user_days.copy()
    for c in USER_DAY_COLUMNS:
        if c not in ud:
            ud[c] = 0
    start = int(exposures["day"].min())
    units = unit_windows(exposures, closed_day)
    units = units[units["end"] > units["first"]].reset_index(drop=True)
    arms = sorted(exposures["arm"].unique())
    out: dict[str, dict[str, dict[str, float]]] = {}
    if units.empty:
        return out
    first, end = units["first"].to_numpy(), units["end"].to_numpy()
    days = (end - first).astype(float)
    win = _sum_days(units, ud, first, end, ("minutes", "sessions", "clicks", "impressions", "hates"))
    pre_lo = start - settings.pre_days
    pre = _sum_days(units, ud, np.full(len(units), pre_lo), np.full(len(units), start),
                    ("minutes", "sessions", "clicks", "impressions", "hates"))
    # Pre-period per-day means use the days the log actually covers (a world may have fewer than pre_days).
    have = ud["day"][(ud["day"] >= pre_lo) & (ud["day"] < start)]
    pre_len = float(have.max() - max(int(have.min()), pre_lo) + 1) if len(have) else 1.0

    def put(metric: str, mask: np.ndarray, y: np.ndarray, x: np.ndarray) -> None:
        refs = dict(ref_y=reference(y[mask]), ref_x=reference(x[mask]))   # one per metric, all arms
        for arm in arms:
            sel = mask & (units["arm"].to_numpy() == arm)
            out.setdefault(metric, {})[arm] = SufficientStats.from_arrays(y[sel], x[sel], **refs).to_dict()

    def put_ratio(metric: str, mask: np.ndarray, m: np.ndarray, d: np.ndarray) -> None:
        refs = dict(ref_m=reference(m[mask]), ref_d=reference(d[mask]))
        for arm in arms:
            sel = mask & (units["arm"].to_numpy() == arm)
            out.setdefault(metric, {})[arm] = RatioStats.from_arrays(m[sel], d[sel], **refs).to_dict()

    everyone = np.ones(len(units), dtype=bool)
    put("watch_minutes", everyone, win["minutes"].to_numpy() / days, pre["minutes"].to_numpy() / pre_len)
    put("sessions", everyone, win["sessions"].to_numpy() / days, pre["sessions"].to_numpy() / pre_len)
    put_ratio("ctr", everyone, win["clicks"].to_numpy(), win["impressions"].to_numpy())
    put_ratio("hate_rate", everyone, win["hates"].to_numpy(), win["impressions"].to_numpy())

    # Delayed metrics: only cohorts whose window has closed.
    matured = first + 1 <= closed_day
    nxt = _sum_days(units, ud, first + 1, first + 2, ("active",))["active"].to_numpy()
    x_ret = _pre_next_day_rate(ud, units["user_id"].to_numpy(), pre_lo, start).to_numpy()
    put("returned_next_day", matured, (nxt > 0).astype(float), x_ret)

    a = settings.active_window
    matured = first + a <= closed_day
    act = _sum_days(units, ud, first + 1, first + 1 + a, ("active",))["active"].to_numpy()
    x_act = _sum_days(units, ud, np.full(len(units), start - a), np.full(len(units), start), ("active",))["active"].to_numpy()
    put("active_days", matured, np.minimum(act, a).astype(float), np.minimum(x_act, a).astype(float))
    return out


def cohort_sizes(exposures: pd.DataFrame, closed_day: int) -> dict[tuple[str, int, int], int]:
    """{(arm, day, phase): users whose first exposure in the experiment was that day, in that ramp phase, in
    that arm}, closed days only (a log without phases: phase 0).

    Assignment at first exposure does not depend on any treatment, so the users first exposed in a phase
    split by that phase's weights: the sample-ratio check compares these counts with the weights of each
    phase (a day can hold two phases: a ramp step starts at any time of day)."""
    if exposures.empty:
        return {}
    e = exposures if "phase" in exposures else exposures.assign(phase=0)
    e = e.sort_values(["user_id", "day", "phase"]).drop_duplicates("user_id")
    e = e[e["day"] <= closed_day]
    return {(str(a), int(d), int(p)): int(n) for (a, d, p), n in e.groupby(["arm", "day", "phase"]).size().items()}
