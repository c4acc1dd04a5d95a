"""The simulated world: catalogue, users and their dynamic state, stepped one slate at a time.

Live API (docs/CONTRACTS.md, "World live API"):

    world = World.load(data_dir)
    day = world.begin_day(users=None)
    while (req := day.next_request()) is not None:
        day.respond(policy(req))            # int[n, slate] item ids in rank order
    log = day.finish()                      # DayLog(impressions, user_days, truth); overnight updates
    world.save(state_dir)

Everything is vectorised over the users in session. Every random draw of a user is keyed by
(seed, stream, user id, day, step, slot) (see rng.py), so a subset of users simulated alone behaves
exactly as the same users inside the full population, whatever the policy does for the others.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from cambrian.errors import CambrianError, ConfigError

from . import rng
from .params import WorldParams
from .population import Catalogue, Users, make_catalogue, make_users

SCHEMA_VERSION = 1
STATE_FILE = "state.npz"
WORLD_FILE = "world.json"

IMPRESSION_DTYPES = {
    "impression_id": "int64", "day": "int16", "user_id": "int32", "session": "int16", "step": "int16",
    "position": "int8", "item_id": "int32", "click": "int8", "watch_seconds": "float32",
    "completion": "float32", "skip": "int8", "like": "int8", "hate": "int8",
}
USER_DAY_DTYPES = {
    "day": "int16", "user_id": "int32", "active": "int8", "sessions": "int16", "impressions": "int32",
    "clicks": "int32", "minutes": "float32", "returned_next_day": "int8",
}
USER_TRUTH_DTYPES = {
    "day": "int16", "user_id": "int32", "satisfaction_start": "float32", "satisfaction_end": "float32",
}


class WorldError(CambrianError):
    """Misuse of the live API (wrong order of calls, malformed slates, unknown users)."""


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


@dataclass
class SlateRequest:
    """One step for every user currently in a session: rank `candidates` into a slate."""

    user_ids: np.ndarray  # int64 [n]
    candidates: np.ndarray  # int64 [n, C] item ids proposed by the retrieval stage (distinct per row)
    day: np.ndarray  # int64 [n] each user's day
    step: int  # step within the day (the same for all users in the request)
    slate_size: int


@dataclass
class DayLog:
    impressions: pd.DataFrame  # contract columns, IMPRESSION_DTYPES
    user_days: pd.DataFrame  # contract columns, USER_DAY_DTYPES
    truth: pd.DataFrame  # hidden: satisfaction at start and end of the day (USER_TRUTH_DTYPES)


@dataclass
class State:
    """Dynamic per-user state; everything the world needs to continue after a restart."""

    day: np.ndarray  # int64 [n]: the next day each user will live
    sat: np.ndarray  # float64 [n]: latent satisfaction (logit scale)
    fatigue: np.ndarray  # float64 [n, K]: topic satiation
    interest: np.ndarray  # float64 [n, K]: unit-norm interests (drift when eta_u > 0)
    minutes_prev: np.ndarray  # float64 [n]: watch minutes on the user's previous day
    active_next: np.ndarray  # bool [n]: whether the user shows up on `day` (drawn at the last overnight)
    seen: np.ndarray  # float64 [n, K]: exposure memory, the recent topic mix shown to the user (novelty)
    next_impression_id: int = 0

    ARRAYS = ("day", "sat", "fatigue", "interest", "minutes_prev", "active_next", "seen")


class World:
    def __init__(self, params: WorldParams | None = None, seed: int = 0):
        if not isinstance(seed, (int, np.integer)) or not 0 <= int(seed) < 2**63:
            raise ConfigError(f"seed must be an integer in [0, 2**63), got {seed!r}")
        self.params = params or WorldParams()
        self.seed = int(seed)
        self.catalogue: Catalogue = make_catalogue(self.seed, self.params)
        self.users: Users = make_users(self.seed, self.params)
        self.n_users = self.params.n_users
        self.state = self._initial_state()
        self._open = np.zeros(self.n_users, dtype=bool)  # users inside an unfinished Day

    # ----------------------------------------------------------------- state
    def _initial_state(self) -> State:
        p, n = self.params, self.n_users
        st = State(
            day=np.zeros(n, dtype=np.int64),
            sat=self.users.sat0.copy(),
            fatigue=np.zeros((n, p.n_topics)),
            interest=self.users.interest.copy(),
            minutes_prev=np.zeros(n),
            active_next=np.zeros(n, dtype=bool),
            seen=self._seen0(),
        )
        ids = np.arange(n)
        st.active_next = self._draw_return(ids, st.day, st.sat, st.minutes_prev)
        return st

    def _seen0(self) -> np.ndarray:
        """Before any log, users have seen what random retrieval shows: the catalogue's mean topic mix."""
        mean = self.catalogue.topics.mean(axis=0)
        return np.broadcast_to(mean, (self.n_users, mean.size)).copy()

    def _return_logit(self, ids, day, sat, minutes_prev) -> np.ndarray:
        """Logit of showing up on `day`: satisfaction, yesterday's minutes, personal habit, weekday."""
        p = self.params
        weekday = np.asarray(p.dow_return)[np.asarray(day) % 7]
        return p.r0 + p.r_sat * sat + p.r_watch * np.tanh(minutes_prev / 20.0) + self.users.habit[ids] + weekday

    def _draw_return(self, ids, day, sat, minutes_prev) -> np.ndarray:
        prob = sigmoid(self._return_logit(ids, day, sat, minutes_prev))
        return rng.uniform(rng.key(self.seed, rng.RETURN, ids, day)) < prob

    @property
    def day(self) -> int:
        """The next day of the earliest user (all users share it unless subsets were run apart)."""
        return int(self.state.day.min())

    def return_probability(self, user_ids: np.ndarray | None = None) -> np.ndarray:
        """Hidden truth: probability that each user shows up on its next day, before the draw."""
        ids = np.arange(self.n_users) if user_ids is None else np.asarray(user_ids)
        st = self.state
        return sigmoid(self._return_logit(ids, st.day[ids], st.sat[ids], st.minutes_prev[ids]))

    # ------------------------------------------------------------- stepping
    def begin_day(self, users: np.ndarray | list[int] | None = None) -> "Day":
        ids = np.arange(self.n_users) if users is None else _check_users(users, self.n_users)
        if self._open[ids].any():
            busy = ids[self._open[ids]][:5].tolist()
            raise WorldError(f"users {busy} are already in an unfinished day; call finish() on it first")
        return Day(self, ids)

    def run_day(self, policy: Callable[[SlateRequest], np.ndarray], users=None) -> DayLog:
        day = self.begin_day(users)
        while (req := day.next_request()) is not None:
            day.respond(policy(req))
        return day.finish()

    def run(self, policy: Callable[[SlateRequest], np.ndarray], days: int, users=None) -> list[DayLog]:
        return [self.run_day(policy, users) for _ in range(days)]

    # ------------------------------------------------------------ save/load
    def describe(self) -> dict:
        p = self.params
        return {
            "schema_version": SCHEMA_VERSION, "seed": self.seed, "n_users": self.n_users,
            "n_items": p.n_items, "n_topics": p.n_topics, "params": p.model_dump(mode="json"), "day": self.day,
        }

    def save(self, directory: str | Path, state_name: str = STATE_FILE) -> Path:
        """Write world.json (what to rebuild) and the dynamic state; returns the state file."""
        if self._open.any():
            raise WorldError("cannot save while a day is unfinished; call finish() first")
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        meta_path = d / WORLD_FILE
        meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
        if meta and (meta.get("seed") != self.seed or _params_of(meta) != self.params):
            raise WorldError(f"{meta_path} describes a different world (seed or params differ)")
        meta.update(self.describe())
        meta_path.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        return self.save_state(d / state_name)

    def save_state(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        st = self.state
        arrays = {name: getattr(st, name) for name in State.ARRAYS}
        arrays["next_impression_id"] = np.array(st.next_impression_id, dtype=np.int64)
        arrays["seed"] = np.array(self.seed, dtype=np.int64)
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(tmp, **arrays)
        tmp.replace(path)  # atomic: a crash never leaves half a state
        return path

    @classmethod
    def load(cls, directory: str | Path, state_dir: str | Path | None = None) -> "World":
        """Rebuild the world of a data or state directory and resume its dynamic state.

        The state is read from `state_dir/state.npz` if given, else `directory/state.npz`, else
        `directory/truth/state.npz` (written by `generate`: the state after the last logged day).
        Without any, the world starts at day 0.
        """
        d = Path(directory)
        meta_path = d / WORLD_FILE
        if not meta_path.is_file():
            raise ConfigError(f"{meta_path} not found", hint="generate one with `cambrian world generate`")
        try:
            meta = json.loads(meta_path.read_text())
            params = WorldParams.build(**meta["params"])
            seed = int(meta["seed"])
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"{meta_path} is malformed: {exc}") from None
        if meta.get("schema_version") != SCHEMA_VERSION:
            raise ConfigError(f"{meta_path}: schema_version {meta.get('schema_version')!r}, expected {SCHEMA_VERSION}")
        world = cls(params, seed)
        candidates = [Path(state_dir) / STATE_FILE] if state_dir else [d / STATE_FILE, d / "truth" / STATE_FILE]
        for path in candidates:
            if path.is_file():
                world.load_state(path)
                break
        else:
            if state_dir:
                raise ConfigError(f"{candidates[0]} not found")
        return world

    def load_state(self, path: str | Path) -> None:
        with np.load(path) as z:
            if int(z["seed"]) != self.seed:
                raise ConfigError(f"{path}: state of seed {int(z['seed'])}, world has seed {self.seed}")
            # states written before the exposure memory existed start it fresh
            values = {name: z[name].copy() if name in z.files else getattr(self.state, name).copy()
                      for name in State.ARRAYS}
            next_id = int(z["next_impression_id"])
        for name, arr in values.items():
            want = getattr(self.state, name).shape
            if arr.shape != want:
                raise ConfigError(f"{path}: {name} has shape {arr.shape}, expected {want}")
        self.state = State(**values, next_impression_id=next_id)


def _params_of(meta: dict) -> WorldParams | None:
    """The parameters a world.json describes (fields it predates take their defaults), None if invalid."""
    try:
        return WorldParams.build(**meta.get("params", {}))
    except (ConfigError, TypeError):
        return None


def novelty(seen: np.ndarray, item_unit: np.ndarray) -> np.ndarray:
    """1 - cos(exposure memory, item topics): [n, K] x [n, S, K] -> [n, S]. Items of topics the user
    has rarely been shown lately are fresh; under a steady ranking the memory catches up in days."""
    return 1.0 - np.einsum("nk,nsk->ns", unit_rows(seen), item_unit)


def unit_rows(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _check_users(users, n_users: int) -> np.ndarray:
    ids = np.asarray(users)
    if ids.ndim != 1 or (ids.size and not np.issubdtype(ids.dtype, np.integer)):
        raise WorldError("users must be a 1-d sequence of integer user ids")
    ids = ids.astype(np.int64)
    if ids.size and (ids.min() < 0 or ids.max() >= n_users):
        raise WorldError(f"users must be in [0, {n_users}); got ids in [{ids.min()}, {ids.max()}]")
    uniq = np.unique(ids)
    if uniq.size != ids.size:
        raise WorldError("users contains duplicates")
    return uniq


class Day:
    """One day for a set of users. Use World.begin_day; step with next_request/respond; finish()."""

    def __init__(self, world: World, ids: np.ndarray):
        self.world = world
        p, st, seed = world.params, world.state, world.seed
        self.ids = ids
        self.days = st.day[ids].copy()
        if self.days.size and self.days.max() >= 32767:
            raise WorldError("day counter would overflow int16 in the logs")
        n = ids.size
        self.active = st.active_next[ids].copy()
        self.sessions_total = np.where(self.active, 1 + rng.poisson(rng.key(seed, rng.SESSIONS, ids, self.days), p.extra_sessions), 0)
        self.session = np.zeros(n, dtype=np.int64)
        self.live = self.active.copy()
        self.budget = self._budget(np.arange(n), 0)
        self.nc = np.zeros(n, dtype=np.int64)
        self.clicks = np.zeros(n, dtype=np.int64)
        self.impressions = np.zeros(n, dtype=np.int64)
        self.minutes = np.zeros(n)
        self.sat_start = st.sat[ids].copy()
        self.shown = np.zeros((n, p.n_topics))  # topic mix shown today, for the exposure memory
        self.step = 0
        # per-user base keys of the per-step streams; the step (and slot) are mixed in later
        self._k = {s: rng.key(seed, s, ids, self.days) for s in (rng.CANDIDATES, rng.CLICK, rng.COMPLETION, rng.LEAVE, rng.LIKE, rng.HATE)}
        self._pending: tuple[np.ndarray, np.ndarray] | None = None
        self._records: list[dict[str, np.ndarray]] = []
        self._finished = False
        world._open[ids] = True

    def _budget(self, rows: np.ndarray, session) -> np.ndarray:
        p = self.world.params
        uid, days = self.ids[rows], self.days[rows]
        h = rng.key(self.world.seed, rng.BUDGET, uid, days, session)
        scale = p.budget_scale * self.world.users.budget_mult[uid] * np.asarray(p.dow_budget)[days % 7]
        return scale * rng.gamma(h, p.budget_shape)

    @property
    def users(self) -> np.ndarray:
        """All users of this day (active or not), sorted."""
        return self.ids

    @property
    def active_users(self) -> np.ndarray:
        """The users who showed up today (drawn by the return model at the previous overnight)."""
        return self.ids[self.active]

    def next_request(self) -> SlateRequest | None:
        self._check_open()
        if self._pending is not None:
            raise WorldError("respond() to the previous request before asking for the next one")
        p, cat = self.world.params, self.world.catalogue
        rows = np.flatnonzero(self.live)
        if rows.size == 0 or self.step >= p.max_steps_per_day:
            return None
        # retrieval: a random walk with a stride coprime to n_items over a fixed shuffle -> distinct items
        h = rng.sub(self._k[rng.CANDIDATES][rows], self.step)
        start = (h % np.uint64(p.n_items)).astype(np.int64)
        stride = cat.units_mod_n[(rng.sub(h, 1) % np.uint64(cat.units_mod_n.size)).astype(np.int64)]
        walk = (start[:, None] + stride[:, None] * np.arange(p.n_candidates)[None, :]) % p.n_items
        candidates = cat.perm[walk]
        self._pending = (rows, candidates)
        return SlateRequest(self.ids[rows], candidates, self.days[rows], self.step, p.slate)

    def respond(self, slates) -> None:
        self._check_open()
        if self._pending is None:
            raise WorldError("respond() called without a pending request; call next_request() first")
        rows, _ = self._pending
        p, cat, st, w = self.world.params, self.world.catalogue, self.world.state, self.world
        slates = _check_slates(slates, rows.size, p.slate, p.n_items)
        uid = self.ids[rows]
        n, k = slates.shape
        step = self.step

        # choice: multinomial logit over the slate plus a no-click option
        aff = np.einsum("nk,nsk->ns", st.interest[uid], cat.unit[slates])
        fat = np.einsum("nk,nsk->ns", st.fatigue[uid], cat.topics[slates])
        bait = cat.bait[slates]
        z = p.th_aff * aff + p.th_bait * w.users.bait_sus[uid, None] * bait - p.th_satiation * fat - p.th_pos * np.arange(k)
        if p.th_novelty:
            z = z + p.th_novelty * novelty(st.seen[uid], cat.unit[slates])
        self.shown[rows] += cat.topics[slates].sum(axis=1)
        z = np.concatenate([z, np.full((n, 1), p.null_logit)], axis=1)
        e = np.exp(z - z.max(axis=1, keepdims=True))
        cum = np.cumsum(e, axis=1)
        u = rng.uniform(rng.sub(self._k[rng.CLICK][rows], step))
        choice = np.minimum((cum < (u * cum[:, -1])[:, None]).sum(axis=1), k)
        clicked = choice < k
        r = np.arange(n)
        pos = np.minimum(choice, k - 1)
        item = slates[r, pos]
        q, b, length = cat.quality[item], cat.bait[item], cat.length[item]

        # consumption and labels (meaningful only where clicked)
        noise = p.completion_noise * rng.normal(rng.sub(self._k[rng.COMPLETION][rows], step))
        omega = sigmoid(p.w0 + p.w_aff * aff[r, pos] + p.w_q * (q - 0.5) - p.w_bait * b + noise)
        omega = np.where(clicked, omega, 0.0)
        watch = omega * length  # minutes
        like = clicked & (rng.uniform(rng.sub(self._k[rng.LIKE][rows], step)) < sigmoid(p.like_a + p.like_b * q))
        hate = clicked & (rng.uniform(rng.sub(self._k[rng.HATE][rows], step)) < sigmoid(p.hate_c + p.hate_d * b))

        # satisfaction, satiation, interests
        ds = np.where(clicked, p.eta_s * ((q - 0.5) + p.rho_w * (omega - 0.5) - p.lam_bait * b), -p.eta_noclick)
        st.sat[uid] += ds
        f = st.fatigue[uid] * p.sat_session_decay
        f[clicked] += p.sat_inc * cat.topics[item[clicked]]
        st.fatigue[uid] = f
        if p.eta_u > 0 and clicked.any():
            c = clicked
            moved = st.interest[uid[c]] + p.eta_u * np.sign(q[c] - 0.5)[:, None] * (cat.unit[item[c]] - st.interest[uid[c]])
            moved = np.maximum(moved, 0.0)
            st.interest[uid[c]] = moved / np.maximum(np.linalg.norm(moved, axis=1, keepdims=True), 1e-12)

        # session: budget, leave hazard, next session
        self.budget[rows] -= watch + p.browse_cost - p.extend * watch * (q - 0.5) - p.hook * watch * b
        self.nc[rows] = np.where(clicked, 0, self.nc[rows] + 1)
        hazard = sigmoid(p.h0 - p.h_sat * st.sat[uid] + p.h_nc * self.nc[rows])
        leave = rng.uniform(rng.sub(self._k[rng.LEAVE][rows], step)) < hazard
        session_now = self.session[rows].copy()
        self.clicks[rows] += clicked
        self.impressions[rows] += k
        self.minutes[rows] += watch
        ended = rows[(self.budget[rows] <= 0) | leave]
        if ended.size:
            more = ended[self.session[ended] + 1 < self.sessions_total[ended]]
            self.live[np.setdiff1d(ended, more, assume_unique=True)] = False
            if more.size:
                self.session[more] += 1
                self.nc[more] = 0
                self.budget[more] = self._budget(more, self.session[more])

        onehot = np.zeros((n, k), dtype=bool)
        onehot[r[clicked], choice[clicked]] = True
        self._records.append({
            "day": np.repeat(self.days[rows], k), "user_id": np.repeat(uid, k),
            "session": np.repeat(session_now, k), "step": np.full(n * k, step),
            "position": np.tile(np.arange(k), n), "item_id": slates.ravel(),
            "click": onehot.ravel(),
            "watch_seconds": np.where(onehot, (watch * 60.0)[:, None], 0.0).ravel(),
            "completion": np.where(onehot, omega[:, None], 0.0).ravel(),
            "skip": (onehot & (omega < p.skip_threshold)[:, None]).ravel(),
            "like": (onehot & like[:, None]).ravel(), "hate": (onehot & hate[:, None]).ravel(),
        })
        self._pending = None
        self.step += 1

    def finish(self) -> DayLog:
        """End the day (sessions still running end now), apply overnight updates, return the logs."""
        self._check_open()
        self._pending = None
        w, p, st, ids = self.world, self.world.params, self.world.state, self.ids
        sessions = np.where(self.active, self.session + 1, 0)
        sat_end = st.sat[ids].copy()
        # overnight: memory fades, satiation rests, the return decision for tomorrow is drawn now
        st.sat[ids] *= p.sat_decay
        st.fatigue[ids] *= p.sat_daily_decay
        shown = self.shown.sum(axis=1) > 0  # exposure memory follows what was shown today
        mix = self.shown[shown] / self.shown[shown].sum(axis=1, keepdims=True)
        st.seen[ids[shown]] = (1 - p.novelty_rate) * st.seen[ids[shown]] + p.novelty_rate * mix
        st.minutes_prev[ids] = self.minutes
        st.day[ids] += 1
        st.active_next[ids] = w._draw_return(ids, st.day[ids], st.sat[ids], st.minutes_prev[ids])

        impressions = self._impressions(st)
        user_days = _frame({
            "day": self.days, "user_id": ids, "active": self.active, "sessions": sessions,
            "impressions": self.impressions, "clicks": self.clicks, "minutes": self.minutes,
            "returned_next_day": st.active_next[ids],
        }, USER_DAY_DTYPES)
        truth = _frame({"day": self.days, "user_id": ids, "satisfaction_start": self.sat_start,
                        "satisfaction_end": sat_end}, USER_TRUTH_DTYPES)
        self._finished = True
        w._open[ids] = False
        return DayLog(impressions, user_days, truth)

    def _impressions(self, st: State) -> pd.DataFrame:
        cols = [c for c in IMPRESSION_DTYPES if c != "impression_id"]
        if self._records:
            data = {c: np.concatenate([r[c] for r in self._records]) for c in cols}
        else:
            data = {c: np.zeros(0) for c in cols}
        order = np.lexsort((data["position"], data["step"], data["user_id"], data["day"]))
        data = {c: v[order] for c, v in data.items()}
        count = order.size
        data = {"impression_id": st.next_impression_id + np.arange(count), **data}
        st.next_impression_id += count
        return _frame(data, IMPRESSION_DTYPES)

    def _check_open(self) -> None:
        if self._finished:
            raise WorldError("this day is finished; begin a new one with world.begin_day()")


def _check_slates(slates, n: int, k: int, n_items: int) -> np.ndarray:
    s = np.asarray(slates)
    if s.shape != (n, k):
        raise WorldError(f"slates must have shape ({n}, {k}) (one row per requested user), got {s.shape}")
    if not np.issubdtype(s.dtype, np.integer):
        raise WorldError(f"slates must hold integer item ids, got dtype {s.dtype}")
    s = s.astype(np.int64)
    if n and (s.min() < 0 or s.max() >= n_items):
        raise WorldError(f"slate item ids must be in [0, {n_items})")
    if k > 1 and n:
        srt = np.sort(s, axis=1)
        if (srt[:, 1:] == srt[:, :-1]).any():
            raise WorldError("a slate shows the same item twice")
    return s


def _frame(data: dict[str, np.ndarray], dtypes: dict[str, str]) -> pd.DataFrame:
    return pd.DataFrame({c: np.asarray(data[c]).astype(dtypes[c]) for c in dtypes})


def concat_logs(logs: list[DayLog]) -> DayLog:
    return DayLog(
        pd.concat([l.impressions for l in logs], ignore_index=True),
        pd.concat([l.user_days for l in logs], ignore_index=True),
        pd.concat([l.truth for l in logs], ignore_index=True),
    )


class ScorePolicy:
    """Adapts score_fn(user_ids[n], candidates[n, C]) -> scores[n, C] into a policy: top-slate by score."""

    def __init__(self, score_fn: Callable[[np.ndarray, np.ndarray], np.ndarray]):
        self.score_fn = score_fn

    def __call__(self, req: SlateRequest) -> np.ndarray:
        scores = np.asarray(self.score_fn(req.user_ids, req.candidates), dtype=np.float64)
        if scores.shape != req.candidates.shape:
            raise WorldError(f"score_fn returned shape {scores.shape}, expected {req.candidates.shape}")
        scores = np.where(np.isfinite(scores), scores, -np.inf)
        k = req.slate_size
        if k < scores.shape[1]:
            head = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        else:
            head = np.broadcast_to(np.arange(scores.shape[1]), scores.shape).copy()
        order = np.argsort(-np.take_along_axis(scores, head, axis=1), axis=1, kind="stable")
        top = np.take_along_axis(head, order, axis=1)
        return np.take_along_axis(req.candidates, top, axis=1)
