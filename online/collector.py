"""Event collector: per-user-per-day activity and first exposures in SQLite; per-arm sums for Prometheus.

POST /events     {"batch_id": str, "rows": [{user_id, day, active, sessions, impressions, clicks,
                  minutes, likes, hates}, ...]}  or  {"batch_id", "columns": {name: [values]}}
                 Adds to the user's day (a batch id is applied at most once, so a retry never double-counts).
POST /exposures  {"experiment": str, "exposures": [[user_id, arm, day | null, phase?], ...]}
                 First exposure per (experiment, user, arm, phase); later ones are ignored. A null day means
                 the collector's current day (POST /clock), or the day after the last closed one if that is
                 later (a closed day never gains exposures); phase is the router's ramp phase (0 when absent):
                 the statistics read the current phase only (aggregate.py says why).
POST /clock      {"day": d}     the day now being simulated/served
POST /close_day  {"day": d}     all events of days <= d are in: recompute the statistics
                 With a warehouse (--warehouse-url), the exposure log then lands there too, and each SQL metric (--warehouse-metrics) is aggregated there into per-arm sums published
                 below like the built-in ones (online/warehouse.py); 503 while the warehouse cannot take
                 them (a retry is harmless), 422 for a metric's SQL the warehouse refuses. With
                 --warehouse-rollout-table (local mode's simulated users' days), each experiment's metrics
                 read only that table's rows of its own rollout.
GET  /stats      the exported statistics as JSON (for debugging; the analysis reads Prometheus)
GET  /healthz, GET /metrics

Exported (no user ids in any label):
  cambrian_arm_stat{experiment, arm, metric, stat}   per-arm sufficient statistics (see aggregate.py)
  cambrian_arm_exposures{experiment, arm}            users ever exposed to the arm (live)
  cambrian_arm_cohort_users{experiment, arm, cohort_day, phase}  users whose first exposure in the experiment was
                                                     on that (closed) day, in that ramp phase and arm: SRM per phase
  cambrian_collector_closed_day                      last closed day (-1 before any)
  cambrian_collector_rows_total, cambrian_collector_batches_duplicate_total
Everything lives in one SQLite file (WAL): a restart loses nothing.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import threading
from pathlib import Path
from typing import Any, Iterable, Mapping

import pandas as pd
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily

from cambrian.errors import ConfigError
from cambrian.online.aggregate import USER_DAY_COLUMNS, AggregationSettings, arm_statistics, cohort_sizes
from cambrian.online.httpjson import BadRequest, error, healthz, is_count, json_response, metrics_handler, read_json

log = logging.getLogger("cambrian.collector")
LANDED_EXPOSURES = "landed_exposure_rowid"  # meta: the last exposure rowid a warehouse has taken
PUBLISHED_DAY = "published_day"  # meta: the closed day the snapshot shows (behind closed_day while it waits to land)

_EXPOSURE_TABLE = """CREATE TABLE IF NOT EXISTS exposure (
  experiment TEXT NOT NULL, user_id INTEGER NOT NULL, arm TEXT NOT NULL, day INTEGER NOT NULL,
  phase INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (experiment, user_id, arm, phase))"""
_SCHEMA = """
CREATE TABLE IF NOT EXISTS user_day (
  user_id INTEGER NOT NULL, day INTEGER NOT NULL, active INTEGER NOT NULL DEFAULT 0,
  sessions INTEGER NOT NULL DEFAULT 0, impressions INTEGER NOT NULL DEFAULT 0, clicks INTEGER NOT NULL DEFAULT 0,
  minutes REAL NOT NULL DEFAULT 0, likes INTEGER NOT NULL DEFAULT 0, hates INTEGER NOT NULL DEFAULT 0,
  PRIMARY KEY (user_id, day));
""" + _EXPOSURE_TABLE + """;
CREATE TABLE IF NOT EXISTS batch (batch_id TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS external_sums (day INTEGER PRIMARY KEY, sums TEXT NOT NULL);
"""

_UPSERT = (
    "INSERT INTO user_day (user_id, day, active, sessions, impressions, clicks, minutes, likes, hates) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(user_id, day) DO UPDATE SET "
    "active = MAX(active, excluded.active), sessions = sessions + excluded.sessions, "
    "impressions = impressions + excluded.impressions, clicks = clicks + excluded.clicks, "
    "minutes = minutes + excluded.minutes, likes = likes + excluded.likes, hates = hates + excluded.hates"
)


class Store:
    """The durable state. Thread-safe through one lock (SQLite connections are not shared across threads)."""

    def __init__(self, path: str | Path, settings: AggregationSettings = AggregationSettings()):
        self.path = str(path)
        self.settings = settings
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        _add_phases(self._db)
        self._db.executescript(_SCHEMA)
        # (closed_day, {experiment: {metric: {arm: sums}}}, {experiment: {(arm, cohort_day, phase): users}}),
        # swapped as one object so that a scrape never mixes a new closed day with old sums.
        self.snapshot: tuple[int, dict, dict] = (-1, {}, {})
        # (closed day, {experiment: {metric: {arm: sums}}}) computed in the warehouse (online/warehouse.py) for that
        # day, merged over the store's own metrics of the same name while it is the closed day: never published
        # under a later day (a metric is missing, and no decision is taken on it, until the next landing computes it)
        self.external: tuple[int, dict[str, dict[str, dict[str, dict[str, float]]]]] = self._stored_external()
        self.staged: tuple[int, dict, dict] | None = None  # a closed day's snapshot waiting for its warehouse sums
        # A restart shows what was shown before it: the last published day with its warehouse sums (both kept in
        # the file), never a closed day whose SQL metrics had not landed yet (the /close_day retry lands them).
        closed = self.get_meta("closed_day", -1)
        published = self.get_meta(PUBLISHED_DAY, closed)
        self.recompute(day=published)
        if closed != published:
            self.recompute(publish=False)

    @property
    def stats(self) -> dict[str, dict[str, dict[str, dict[str, float]]]]:
        return self.snapshot[1]

    # --- writes ----------------------------------------------------------------------------------
    def add_user_days(self, rows: Iterable[Mapping[str, Any]], batch_id: str | None = None) -> int:
        """Adds rows; returns how many were applied (0 if the batch id was seen before)."""
        values = [_row_values(i, r) for i, r in enumerate(rows)]
        with self._lock:
            self._db.execute("BEGIN")
            try:
                if batch_id is not None:
                    if self._db.execute("SELECT 1 FROM batch WHERE batch_id = ?", (batch_id,)).fetchone():
                        self._db.execute("ROLLBACK")
                        return 0
                    self._db.execute("INSERT INTO batch VALUES (?)", (batch_id,))
                self._db.executemany(_UPSERT, values)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return len(values)

    def add_exposures(self, experiment: str, exposures: Iterable[Any]) -> int:
        if not isinstance(experiment, str) or not experiment:
            raise BadRequest("experiment: required string")
        # a null day is the day now served, never one already closed (between /close_day d and /clock d + 1, and a
        # batch resent after an outage, "now" is after day d): a closed day's cohorts and windows do not change
        today = max(self.get_meta("current_day", 0), self.get_meta("closed_day", -1) + 1)
        values = []
        for i, e in enumerate(exposures):
            if not isinstance(e, (list, tuple)) or len(e) not in (3, 4):
                raise BadRequest(f"exposures[{i}]: must be [user_id, arm, day|null] or [user_id, arm, day|null, phase]")
            u, arm, day, phase = (*e, 0) if len(e) == 3 else e
            if isinstance(u, bool) or not isinstance(u, int):
                raise BadRequest(f"exposures[{i}][0] (user_id): must be an integer")
            if not isinstance(arm, str) or not arm:
                raise BadRequest(f"exposures[{i}][1] (arm): must be a non-empty string")
            if day is not None and (isinstance(day, bool) or not isinstance(day, int)):
                raise BadRequest(f"exposures[{i}][2] (day): must be an integer or null")
            if not is_count(phase):
                raise BadRequest(f"exposures[{i}][3] (phase): must be an integer >= 0")
            values.append((experiment, u, arm, today if day is None else day, phase))
        with self._lock:
            before = self._db.total_changes
            self._db.executemany("INSERT OR IGNORE INTO exposure (experiment, user_id, arm, day, phase) "
                                 "VALUES (?, ?, ?, ?, ?)", values)
            return self._db.total_changes - before

    def set_meta(self, key: str, value: int) -> None:
        with self._lock:
            self._db.execute("INSERT INTO meta VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                             (key, int(value)))

    def get_meta(self, key: str, default: int) -> int:
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return default if row is None else int(row[0])

    def close_day(self, day: int, publish: bool = True) -> None:
        """publish False: the new day's snapshot waits for set_external (a warehouse computes some of its metrics),
        so that no scrape reads the new closed day with those metrics missing (a readout then decides without
        them: at the last look, inconclusive for want of data that was about to land)."""
        closed = self.get_meta("closed_day", -1)
        if day < closed:
            raise BadRequest(f"day: {day} is before the last closed day {closed}")
        self.set_meta("closed_day", day)
        self.recompute(publish)

    # --- reads -----------------------------------------------------------------------------------
    def frames(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        with self._lock:
            ud = pd.read_sql_query("SELECT * FROM user_day", self._db)
            ex = pd.read_sql_query("SELECT * FROM exposure", self._db)
        return ud, ex

    def exposures_after(self, rowid: int) -> tuple[pd.DataFrame, int]:
        """First exposures recorded after `rowid` (SQLite's insertion order: INSERT OR IGNORE never reuses
        one), and the last rowid read: what a warehouse has not been sent yet."""
        with self._lock:
            ex = pd.read_sql_query("SELECT rowid AS rowid_, * FROM exposure WHERE rowid > ? ORDER BY rowid",
                                   self._db, params=(rowid,))
        last = int(ex["rowid_"].iloc[-1]) if len(ex) else rowid
        return ex.drop(columns="rowid_"), last

    def exposures_upto(self, rowid: int) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM exposure WHERE rowid <= ?", (rowid,)).fetchone()[0])

    def exposure_counts(self) -> dict[tuple[str, str], int]:
        with self._lock:
            # users, not (user, phase) rows: a user seen again in a later ramp phase is one user of the arm
            rows = self._db.execute("SELECT experiment, arm, COUNT(DISTINCT user_id) FROM exposure "
                                    "GROUP BY experiment, arm").fetchall()
        return {(e, a): n for e, a, n in rows}

    def recompute(self, publish: bool = True, day: int | None = None) -> None:
        """The statistics as of the last closed day (or `day`, an earlier closed one), published or staged."""
        closed = self.get_meta("closed_day", -1) if day is None else day
        ud, ex = self.frames()
        stats, cohorts = {}, {}
        external = self.external[1] if self.external[0] == closed else {}
        for experiment, group in ex.groupby("experiment"):
            stats[experiment] = {**arm_statistics(group, ud, closed, self.settings), **external.get(experiment, {})}
            cohorts[experiment] = cohort_sizes(group, closed)
        if publish:
            self._publish((closed, stats, cohorts))
        else:
            self.staged = (closed, stats, cohorts)

    def _publish(self, snapshot: tuple[int, dict, dict]) -> None:
        self.snapshot, self.staged = snapshot, None  # one reference swap: /metrics reads either
        self.set_meta(PUBLISHED_DAY, snapshot[0])

    def set_external(self, day: int, sums: dict[str, dict[str, dict[str, dict[str, float]]]]) -> None:
        """Per-arm sums computed elsewhere (the warehouse) for closed day `day`, published beside the store's own
        while it is the closed day (merged into the current snapshot: no second recompute of the store's)."""
        with self._lock:  # kept with the day: a restart publishes them again (they are not recomputed here)
            self._db.execute("BEGIN")
            try:
                self._db.execute("DELETE FROM external_sums")
                self._db.execute("INSERT INTO external_sums VALUES (?, ?)", (day, json.dumps(sums)))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        self.external = (day, sums)
        closed, stats, cohorts = self.staged if self.staged is not None and self.staged[0] == day else self.snapshot
        if closed == day:
            self._publish((closed, {e: {**s, **sums.get(e, {})} for e, s in stats.items()}, cohorts))

    def _stored_external(self) -> tuple[int, dict]:
        with self._lock:
            row = self._db.execute("SELECT day, sums FROM external_sums").fetchone()
        return (-1, {}) if row is None else (int(row[0]), json.loads(row[1]))

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _add_phases(db: sqlite3.Connection) -> None:
    """A store from before ramp phases: its exposure log becomes phase 0 under the new key, in one transaction
    (a crash leaves the old table or the new one, never neither)."""
    cols = [r[1] for r in db.execute("PRAGMA table_info(exposure)").fetchall()]
    if not cols or "phase" in cols:
        return
    db.execute("BEGIN")
    try:
        db.execute("ALTER TABLE exposure RENAME TO exposure_before_phases")
        db.execute(_EXPOSURE_TABLE)
        db.execute("INSERT INTO exposure (experiment, user_id, arm, day, phase) "
                   "SELECT experiment, user_id, arm, day, 0 FROM exposure_before_phases ORDER BY rowid")
        db.execute("DROP TABLE exposure_before_phases")
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise


def _row_values(i: int, r: Mapping[str, Any]) -> tuple:
    if not isinstance(r, Mapping):
        raise BadRequest(f"rows[{i}]: must be an object")
    out = []
    for key in ("user_id", "day"):
        v = r.get(key)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v != int(v):
            raise BadRequest(f"rows[{i}].{key}: required integer")
        out.append(int(v))
    for key in USER_DAY_COLUMNS:
        v = r.get(key, 0)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
            raise BadRequest(f"rows[{i}].{key}: must be a non-negative number")
        out.append(float(v) if key == "minutes" else int(v))
    return tuple(out)


class _StatsExport:
    """A prometheus_client collector that renders the store's current statistics at scrape time."""

    def __init__(self, store: Store):
        self.store = store

    def collect(self):
        closed_day, stats, cohorts = self.store.snapshot
        stat = GaugeMetricFamily("cambrian_arm_stat", "Per-arm sufficient statistics of per-user metrics",
                                 labels=["experiment", "arm", "metric", "stat"])
        for experiment, metrics in stats.items():
            for metric, arms in metrics.items():
                for arm, sums in arms.items():
                    for name, value in sums.items():
                        stat.add_metric([experiment, arm, metric, name], float(value))
        yield stat
        exp = GaugeMetricFamily("cambrian_arm_exposures", "Users first exposed to each arm", labels=["experiment", "arm"])
        for (experiment, arm), n in sorted(self.store.exposure_counts().items()):
            exp.add_metric([experiment, arm], n)
        yield exp
        coh = GaugeMetricFamily("cambrian_arm_cohort_users",
                                "Users by the day, ramp phase and arm of their first exposure in the experiment "
                                "(closed days; for SRM against each phase's weights)",
                                labels=["experiment", "arm", "cohort_day", "phase"])
        for experiment, counts in cohorts.items():
            for (arm, day, phase), n in sorted(counts.items()):
                coh.add_metric([experiment, arm, str(day), str(phase)], n)
        yield coh
        closed = GaugeMetricFamily("cambrian_collector_closed_day", "Last day whose events are complete")
        closed.add_metric([], closed_day)
        yield closed


class Collector:
    def __init__(self, store: Store, registry: CollectorRegistry | None = None, warehouse_url: str | None = None,
                 warehouse_metrics: list | None = None, warehouse_rollout_table: str | None = None):
        self.store = store
        # Warehouse-native metrics (online/warehouse.py): the exposure log lands in the warehouse, where each metric's SQL is aggregated into per-arm sums that this collector publishes
        # like its own, so the analysis reads them from Prometheus unchanged.
        self.warehouse_url = warehouse_url
        self.warehouse_metrics = list(warehouse_metrics or [])
        self.warehouse_rollout_table = warehouse_rollout_table  # rows keyed by rollout: each experiment reads its own
        self.registry = registry or CollectorRegistry()
        self.registry.register(_StatsExport(store))
        self.m_rows = Counter("cambrian_collector_rows", "User-day rows applied", registry=self.registry)
        self.m_dup = Counter("cambrian_collector_batches_duplicate", "Event batches ignored as repeats",
                             registry=self.registry)

    async def handle_events(self, request: web.Request) -> web.Response:
        try:
            body = await read_json(request)
            batch_id = body.get("batch_id")
            if batch_id is not None and not isinstance(batch_id, str):
                raise BadRequest("batch_id: must be a string")
            if "columns" in body:
                cols = body["columns"]
                if not isinstance(cols, dict) or not all(isinstance(v, list) for v in cols.values()):
                    raise BadRequest("columns: must map column names to lists")
                if len({len(v) for v in cols.values()}) > 1:
                    raise BadRequest("columns: all columns must have the same length")
                rows = [dict(zip(cols, vals)) for vals in zip(*cols.values())]
            elif isinstance(body.get("rows"), list):
                rows = body["rows"]
            else:
                raise BadRequest("rows: required list (or columns: mapping)")
            # SQLite work off the event loop so scrapes and exposures are not held up.
            applied = await asyncio.to_thread(self.store.add_user_days, rows, batch_id)
        except BadRequest as exc:
            return error(400, str(exc))
        if applied == 0 and rows:
            self.m_dup.inc()
        self.m_rows.inc(applied)
        return json_response({"applied": applied, "duplicate": applied == 0 and bool(rows)})

    async def handle_exposures(self, request: web.Request) -> web.Response:
        try:
            body = await read_json(request)
            exposures = body.get("exposures")
            if not isinstance(exposures, list):
                raise BadRequest("exposures: required list")
            added = await asyncio.to_thread(self.store.add_exposures, body.get("experiment"), exposures)
        except BadRequest as exc:
            return error(400, str(exc))
        return json_response({"added": added})

    async def _day_body(self, request: web.Request) -> int:
        body = await read_json(request)
        day = body.get("day")
        if isinstance(day, bool) or not isinstance(day, int):
            raise BadRequest("day: required integer")
        return day

    async def handle_clock(self, request: web.Request) -> web.Response:
        try:
            day = await self._day_body(request)
        except BadRequest as exc:
            return error(400, str(exc))
        self.store.set_meta("current_day", day)
        return json_response({"current_day": day})

    async def handle_close_day(self, request: web.Request) -> web.Response:
        try:
            day = await self._day_body(request)
            await asyncio.to_thread(self.store.close_day, day, not self.warehouse_url)
        except BadRequest as exc:
            return error(400, str(exc))
        if self.warehouse_url:
            from cambrian.online.warehouse import WarehouseUnavailable

            try:
                await asyncio.to_thread(self._land, day)
            except (WarehouseUnavailable, OSError) as exc:  # the SQLite log keeps everything: a retry lands it
                return error(503, f"day {day} closed here, not yet in the warehouse: {exc}")
            except ConfigError as exc:  # a metric's SQL the warehouse cannot run: say which, keep the rest
                self.store.set_external(day, {})  # the day is published without them (a retry cannot help)
                return error(422, f"day {day} closed, warehouse metrics not computed: {exc}")
        return json_response({"closed_day": day})

    def _land(self, day: int) -> None:
        """The exposure log into the warehouse, then the SQL metrics' sums out of it."""
        from cambrian.errors import one_line
        from cambrian.online.warehouse import (WarehouseError, WarehouseUnavailable, connect, exposure_rows,
                                               land_collector_log, metric_sums)
        from cambrian.trainer.sources import redact

        experiments = sorted({e for e, _ in self.store.exposure_counts()})
        con = connect(self.warehouse_url, write=True)
        try:
            # only what was not landed yet; all of it again when the warehouse lost rows it had been sent
            mark = self.store.get_meta(LANDED_EXPOSURES, 0)
            if mark and exposure_rows(con) < self.store.exposures_upto(mark):
                log.warning("the warehouse has fewer exposures than were landed there: landing them all again")
                mark = 0
            ex, last = self.store.exposures_after(mark)
            land_collector_log(con, {str(e): list(g[["user_id", "arm", "day", "phase"]].itertuples(index=False, name=None))
                                     for e, g in ex.groupby("experiment")})
            self.store.set_meta(LANDED_EXPOSURES, last)
        except Exception as exc:  # noqa: BLE001 - the driver's errors, whatever their class
            raise WarehouseUnavailable(f"{redact(self.warehouse_url)}: {redact(one_line(exc))}") from None
        finally:
            getattr(con, "disconnect", lambda: None)()
        if not self.warehouse_metrics:
            self.store.set_external(day, {e: {} for e in experiments})
            return
        con = connect(self.warehouse_url)  # the metrics' SQL only reads, under limits (connect, metric_sums)
        table = self.warehouse_rollout_table
        try:
            sums = {e: {m.name: {arm: x.to_dict() for arm, x in
                                 metric_sums(con, e, m, day, self.store.settings, rollout_table=table).items()}
                        for m in self.warehouse_metrics} for e in experiments}
        except WarehouseError:
            raise
        except Exception as exc:  # noqa: BLE001 - the driver's errors, whatever their class
            raise WarehouseUnavailable(f"{redact(self.warehouse_url)}: {redact(one_line(exc))}") from None
        finally:
            getattr(con, "disconnect", lambda: None)()
        self.store.set_external(day, sums)

    async def handle_stats(self, _: web.Request) -> web.Response:
        closed, stats, cohorts = self.store.snapshot
        return json_response({"closed_day": closed, "stats": stats,
                              "cohorts": {e: [[a, d, p, n] for (a, d, p), n in sorted(c.items())] for e, c in cohorts.items()}})

    def app(self) -> web.Application:
        app = web.Application(client_max_size=256 * 1024 * 1024)
        app.add_routes([web.post("/events", self.handle_events), web.post("/exposures", self.handle_exposures),
                        web.post("/clock", self.handle_clock), web.post("/close_day", self.handle_close_day),
                        web.get("/stats", self.handle_stats), web.get("/healthz", healthz),
                        web.get("/metrics", metrics_handler(self.registry))])
        return app
