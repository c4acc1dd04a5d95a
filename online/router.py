"""User-sticky A/B/n router in front of per-arm model servers.

The serving port (`app`: what users, a Service and a Gateway reach) serves only:
POST /rank     {"user_ids": [n], "candidates": [[C]*n], "k": opt, "day": opt int}
            -> {"slates": [[k]*n], "scores": [[k]*n], "arms": [n]}   (in the request's user order;
               a batch that falls in one arm is passed through and also carries that server's
               "model" and "arm" fields)
GET  /healthz
The admin port (`admin_app`, a port of its own: reading or changing the split is never a user's to do):
GET  /weights  -> {"experiment", "weights": {arm: w}, "urls": {arm: url}, "version": int, "phase": int}
POST /weights  {"weights": {arm: w}, "phase": opt int, "urls": opt {arm: url}} -> the same; also written back to
               the config file, if any (not served with read_only: the config file is someone else's, e.g. the
               operator's ConfigMap). `urls` changes which server serves an arm's users (a stopped A/B/n arm's
               are served control's model) without moving anyone: the arm keeps its users and its phase.
POST /flush    send queued exposures to the collector now (503 if it cannot be reached)
GET  /metrics

A batch is split by arm, the sub-batches are forwarded concurrently and the answers merged. The
first exposure of each (user, arm) in each ramp phase seen by this process is queued and sent to the
collector in the background (the collector deduplicates, so a restart that resends is harmless). The
phase is the config's `phase` (the operator writes step + 1 of the Rollout's ramp; a POST /weights that changes
the weights starts the next one): users move between arms only when it changes, so the analysis reads the
current phase alone (online/aggregate.py). Weights are swapped as one immutable object: a request in
flight keeps the assignment it started with.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import aiohttp
import yaml
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from cambrian.errors import one_line
from cambrian.online.assignment import Assignment
from cambrian.online.httpjson import (BadRequest, error, healthz, is_count, json_response, metrics_handler,
                                     parse_json_object, read_json)
from cambrian.online.server import LATENCY_BUCKETS
from cambrian.online.upstream import UpstreamError, UpstreamPool, parse_http_url

log = logging.getLogger("cambrian.router")

OVERHEAD_BUCKETS = (0.00005, 0.0001, 0.0002, 0.0003, 0.0005, 0.00075, 0.001, 0.002, 0.005, 0.01, 0.05)


def _arm_url(url: str, where: str) -> str:
    """An arm server's base URL, checked (http://host:port)."""
    url = url.rstrip("/")
    try:
        parse_http_url(url)
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None
    return url


@dataclass(frozen=True)
class RouterConfig:
    experiment: str
    salt: str
    control: str
    treatments: tuple[str, ...]
    urls: Mapping[str, str]
    weights: Mapping[str, int]
    collector: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)
    phase: int = 0  # the ramp phase (reconcile/rollout.weights_phase): stamped on every exposure

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "RouterConfig":
        if not isinstance(d, Mapping):
            raise ValueError("router config: must be a mapping")
        for key in ("experiment", "arms"):
            if key not in d:
                raise ValueError(f"router config: {key}: required")
        arms = d["arms"]
        if not isinstance(arms, list) or len(arms) < 2:
            raise ValueError("router config: arms: a list of at least two arms (one control) is required")
        control, treatments, urls, weights = None, [], {}, {}
        for i, arm in enumerate(arms):
            for key in ("name", "url"):
                if not isinstance(arm, Mapping) or not isinstance(arm.get(key), str) or not arm.get(key):
                    raise ValueError(f"router config: arms[{i}].{key}: required string")
            name = arm["name"]
            if name in urls:
                raise ValueError(f"router config: arms[{i}].name: duplicate arm {name!r}")
            urls[name] = _arm_url(arm["url"], f"router config: arms[{i}].url")
            weights[name] = arm.get("weight", 0)
            if arm.get("control", False):
                if control is not None:
                    raise ValueError(f"router config: arms[{i}].control: only one control arm allowed")
                control = name
            else:
                treatments.append(name)
        if control is None:
            raise ValueError("router config: arms: exactly one arm needs `control: true`")
        phase = d.get("phase", 0)
        if not is_count(phase):
            raise ValueError("router config: phase: must be an integer >= 0")
        cfg = cls(experiment=str(d["experiment"]), salt=str(d.get("salt") or d["experiment"]), control=control,
                  treatments=tuple(treatments), urls=urls, weights=weights, collector=d.get("collector"),
                  extra={k: v for k, v in d.items() if k not in ("experiment", "salt", "arms", "collector", "phase")},
                  phase=phase)
        cfg.assignment()  # validates the weights
        return cfg

    @classmethod
    def load(cls, path: str | Path) -> "RouterConfig":
        try:
            data = yaml.safe_load(Path(path).read_text())  # YAML is a superset of JSON
        except (OSError, yaml.YAMLError) as exc:
            raise ValueError(f"router config {path}: cannot read ({one_line(exc)})") from None
        return cls.from_dict(data)

    def assignment(self) -> Assignment:
        return Assignment.create(self.salt, self.control, self.treatments, self.weights)

    def to_dict(self) -> dict[str, Any]:
        arms = [{"name": a, "url": self.urls[a], "weight": self.weights[a], **({"control": True} if a == self.control else {})}
                for a in (self.control, *self.treatments)]
        out = {"experiment": self.experiment, "salt": self.salt, "arms": arms, "phase": self.phase, **dict(self.extra)}
        if self.collector:
            out["collector"] = self.collector
        return out

    def with_weights(self, weights: Mapping[str, int], phase: int | None = None,
                     urls: Mapping[str, str] | None = None) -> "RouterConfig":
        for what, given in (("weights", weights), ("urls", urls or {})):
            unknown = set(given) - set(self.urls)
            if unknown:
                raise ValueError(f"{what}: unknown arm(s) {sorted(unknown)}; arms are {list(self.urls)}")
        want = {a: weights.get(a, 0) for a in self.urls}
        served = dict(self.urls)
        for arm, url in (urls or {}).items():
            if not isinstance(url, str) or not url:
                raise ValueError(f"urls[{arm!r}]: required string")
            served[arm] = _arm_url(url, f"urls[{arm!r}]")
        new = RouterConfig(self.experiment, self.salt, self.control, self.treatments, served, want,
                           self.collector, self.extra, self.phase if phase is None else phase)
        new.assignment()
        return new


def advance_phase(old: RouterConfig, new: RouterConfig) -> RouterConfig:
    """New weights move users between arms: a new phase, so that the analysis never mixes two assignments.
    Phases only grow (a config naming an older one, e.g. after a manual POST /weights, is moved past it)."""
    moved = dict(new.weights) != dict(old.weights)
    return new if new.phase >= old.phase + moved else dataclasses.replace(new, phase=old.phase + moved)


class _State:
    """Everything a request needs, swapped atomically on reload."""

    def __init__(self, cfg: RouterConfig, version: int):
        self.cfg, self.version = cfg, version
        self.assignment = cfg.assignment()
        self.arms = self.assignment.arms
        self.rank_urls = [parse_http_url(cfg.urls[a] + "/rank") for a in self.arms]


class Router:
    def __init__(self, config: RouterConfig, config_path: str | None = None, registry: CollectorRegistry | None = None,
                 watch_interval: float = 0.25, flush_interval: float = 0.2, read_only: bool = False):
        self.config_path, self.read_only = config_path, read_only
        self.state = _State(config, 1)
        self.watch_interval, self.flush_interval = watch_interval, flush_interval
        self._mtime = self._config_mtime()
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.m_requests = Counter("cambrian_router_requests", "Sub-batches forwarded per arm", ["arm"], registry=r)
        self.m_users = Counter("cambrian_router_users", "Users routed per arm", ["arm"], registry=r)
        self.m_errors = Counter("cambrian_router_errors", "Failed sub-batches per arm", ["arm"], registry=r)
        self.m_bad = Counter("cambrian_router_bad_requests", "Malformed rank requests", registry=r)
        self.m_latency = Histogram("cambrian_router_request_seconds", "Rank request time, end to end in the router",
                                   buckets=LATENCY_BUCKETS, registry=r)
        self.m_overhead = Histogram("cambrian_router_overhead_seconds",
                                    "Rank request time spent in the router itself (total minus waiting on arms)",
                                    buckets=OVERHEAD_BUCKETS, registry=r)
        self.m_weight = Gauge("cambrian_router_weight", "Traffic weight per arm (percent)", ["experiment", "arm"], registry=r)
        self.m_reloads = Counter("cambrian_router_reloads", "Weight/config reloads applied", registry=r)
        self.m_reload_errors = Counter("cambrian_router_reload_errors", "Rejected config reloads", registry=r)
        self.m_exp_sent = Counter("cambrian_router_exposures_sent", "First exposures sent to the collector", registry=r)
        self.m_exp_pending = Gauge("cambrian_router_exposures_pending", "Exposures waiting to be sent", registry=r)
        self._publish_weights()
        for arm in self.state.arms:  # series exist at 0 from the start (see server.py)
            for m in (self.m_requests, self.m_users, self.m_errors):
                m.labels(arm=arm)
        self._seen: set[tuple[int, str, int]] = set()
        self._pending: list[list] = []
        self._session: aiohttp.ClientSession | None = None
        self._tasks: list[asyncio.Task] = []
        self._flush_lock: asyncio.Lock | None = None
        self._children: dict[str, tuple] = {}

    # --- weights ---------------------------------------------------------------------------------
    def _config_mtime(self) -> float | None:
        try:
            return os.stat(self.config_path).st_mtime_ns if self.config_path else None
        except OSError:
            return None

    def _publish_weights(self) -> None:
        cfg = self.state.cfg
        for arm, w in cfg.weights.items():
            self.m_weight.labels(experiment=cfg.experiment, arm=arm).set(w)

    def apply(self, cfg: RouterConfig) -> None:
        old = self.state.cfg
        if (cfg.experiment, cfg.salt, cfg.control, cfg.treatments) != (old.experiment, old.salt, old.control, old.treatments):
            raise ValueError("config: experiment, salt and the arms (and their order) cannot change while routing; "
                             "only weights and urls can")
        cfg = advance_phase(old, cfg)
        self.state = _State(cfg, self.state.version + 1)  # one reference swap: in-flight requests keep theirs
        self.m_reloads.inc()
        self._publish_weights()
        log.info("weights now %s", dict(cfg.weights))

    def set_weights(self, weights: Mapping[str, int], phase: int | None = None,
                    urls: Mapping[str, str] | None = None) -> None:
        cfg = advance_phase(self.state.cfg, self.state.cfg.with_weights(weights, phase, urls))  # persisted as applied
        if self.config_path:  # persist so that a restart keeps the same weights
            tmp = Path(f"{self.config_path}.tmp{os.getpid()}")
            tmp.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
            tmp.replace(self.config_path)
            self._mtime = self._config_mtime()
        self.apply(cfg)

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.watch_interval)
            mtime = self._config_mtime()
            if mtime is None or mtime == self._mtime:
                continue
            self._mtime = mtime
            try:
                self.apply(RouterConfig.load(self.config_path))
            except ValueError as exc:
                self.m_reload_errors.inc()
                log.error("config reload rejected, keeping the current weights: %s", exc)

    # --- exposures -------------------------------------------------------------------------------
    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(self.flush_interval)
            await self.flush_exposures()

    async def flush_exposures(self) -> None:
        if self._flush_lock is None:
            self._flush_lock = asyncio.Lock()
        async with self._flush_lock:  # one send at a time: /flush returns only after earlier sends landed
            await self._send_pending()

    async def _send_pending(self) -> None:
        url = self.state.cfg.collector
        if not url or not self._pending:
            return
        batch, self._pending = self._pending, []
        try:
            async with self._session.post(url.rstrip("/") + "/exposures",
                                          json={"experiment": self.state.cfg.experiment, "exposures": batch}) as resp:
                if resp.status != 200:
                    raise RuntimeError(f"collector answered {resp.status}: {await resp.text()}")
            self.m_exp_sent.inc(len(batch))
        except Exception as exc:  # noqa: BLE001 - keep them and retry; nothing is lost
            log.warning("exposures not sent yet (%s); will retry", exc)
            self._pending = batch + self._pending
        self.m_exp_pending.set(len(self._pending))

    # --- ranking ---------------------------------------------------------------------------------
    async def _forward_raw(self, target: tuple[str, int, str], body: bytes) -> bytes:
        status, payload = await self._upstream.post(*target, body)
        if status != 200:
            raise _UpstreamError(status, payload.decode(errors="replace")[:500])
        if not payload.rstrip().endswith(b"}"):
            raise _UpstreamError(502, "arm answered something other than a JSON object")
        return payload

    async def _forward(self, target: tuple[str, int, str], body: bytes) -> dict:
        return json.loads(await self._forward_raw(target, body))

    async def handle_rank(self, request: web.Request) -> web.Response:
        t0 = time.perf_counter()
        st = self.state  # this request keeps this assignment even if the weights change meanwhile
        raw = await request.read()
        try:
            body = parse_json_object(raw)
            users, cands = body.get("user_ids"), body.get("candidates")
            if not isinstance(users, list) or not all(type(u) is int for u in users):
                raise BadRequest("user_ids: required list of integers")
            if not isinstance(cands, list) or len(cands) != len(users):
                raise BadRequest(f"candidates: required list with one row per user ({len(users)})")
            day = body.get("day")
            if day is not None and type(day) is not int:
                raise BadRequest("day: must be an integer")
        except BadRequest as exc:
            self.m_bad.inc()
            return error(400, str(exc))
        idx = st.assignment.arm_index_list(users)
        arm_names = [st.arms[a] for a in idx]
        if len(set(idx)) <= 1:
            # The whole batch goes to one arm (always so for a single user): forward the body as it
            # came and splice the arms into the answer, with no JSON re-encoding of the candidates.
            a = idx[0] if idx else 0
            t1 = time.perf_counter()
            try:
                payload = await self._forward_raw(st.rank_urls[a], raw)
                err = None
            except Exception as exc:  # noqa: BLE001 - reported below
                err = exc
            t2 = time.perf_counter()
            failure = self._count(st.arms[a], len(users), err)
            if failure is not None:
                return failure
            end = payload.rindex(b"}")
            out = b"".join((payload[:end], b',"arms":', json.dumps(arm_names).encode(), b"}"))
            resp = web.Response(body=out, content_type="application/json")
        else:
            groups: dict[int, list[int]] = {}
            for row, a in enumerate(idx):
                groups.setdefault(a, []).append(row)
            extra = {k: body[k] for k in ("k",) if k in body}
            calls, order = [], []
            for a, rows in groups.items():
                sub = {"user_ids": [users[r] for r in rows], "candidates": [cands[r] for r in rows], **extra}
                calls.append(self._forward(st.rank_urls[a], json.dumps(sub, separators=(",", ":")).encode()))
                order.append(a)
            t1 = time.perf_counter()
            results = await asyncio.gather(*calls, return_exceptions=True)
            t2 = time.perf_counter()
            slates: list = [None] * len(users)
            scores: list = [None] * len(users)
            for a, res in zip(order, results):
                rows = groups[a]
                failure = self._count(st.arms[a], len(rows), res if isinstance(res, BaseException) else None)
                if failure is not None:
                    return failure
                for r, sl, sc in zip(rows, res["slates"], res["scores"]):
                    slates[r], scores[r] = sl, sc
            resp = json_response({"slates": slates, "scores": scores, "arms": arm_names})
        seen, pending, phase = self._seen, self._pending, st.cfg.phase
        for u, arm in zip(users, arm_names):
            if (u, arm, phase) not in seen:
                seen.add((u, arm, phase))
                pending.append([u, arm, day, phase])
        t3 = time.perf_counter()
        self.m_latency.observe(t3 - t0)
        self.m_overhead.observe((t3 - t0) - (t2 - t1))
        return resp

    def _count(self, arm: str, n_users: int, err: BaseException | None) -> web.Response | None:
        """Count one forwarded sub-batch; on failure, the error response to return."""
        children = self._children.get(arm)
        if children is None:  # label lookups cost a lock and a dict each: do them once per arm
            children = self._children[arm] = (self.m_requests.labels(arm=arm), self.m_users.labels(arm=arm),
                                              self.m_errors.labels(arm=arm))
        children[0].inc()
        if err is not None:
            children[2].inc()
            status = 400 if isinstance(err, _UpstreamError) and err.status == 400 else 502
            return error(status, f"arm {arm}: {err}")
        children[1].inc(n_users)
        return None

    async def handle_flush(self, _: web.Request) -> web.Response:
        """Send queued exposures now (the traffic driver calls this before closing a day)."""
        await self.flush_exposures()
        if self._pending:
            return error(503, f"{len(self._pending)} exposures could not be sent to the collector yet")
        return json_response({"pending": 0})

    async def handle_get_weights(self, _: web.Request) -> web.Response:
        st = self.state
        return json_response({"experiment": st.cfg.experiment, "weights": dict(st.cfg.weights),
                              "urls": dict(st.cfg.urls), "version": st.version, "phase": st.cfg.phase})

    async def handle_set_weights(self, request: web.Request) -> web.Response:
        try:
            body = await read_json(request)
            weights = body.get("weights")
            if not isinstance(weights, dict):
                raise BadRequest("weights: required mapping of arm -> percent")
            phase = body.get("phase")
            if phase is not None and not is_count(phase):
                raise BadRequest("phase: must be an integer >= 0")
            urls = body.get("urls")
            if urls is not None and not isinstance(urls, dict):
                raise BadRequest("urls: must be a mapping of arm -> url")
            self.set_weights(weights, phase, urls)
        except ValueError as exc:  # BadRequest and assignment validation errors
            self.m_reload_errors.inc()
            return error(400, str(exc))
        return await self.handle_get_weights(request)

    # --- lifecycle -------------------------------------------------------------------------------
    async def _on_startup(self, _: web.Application) -> None:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))  # collector only
        self._upstream = UpstreamPool(timeout=30)  # the hot path to the model servers
        self._tasks = [asyncio.create_task(self._flush_loop())]
        if self.config_path:
            self._tasks.append(asyncio.create_task(self._watch()))

    async def _on_cleanup(self, _: web.Application) -> None:
        for t in self._tasks:
            t.cancel()
        await self.flush_exposures()
        await self._session.close()
        await self._upstream.close()

    def app(self) -> web.Application:
        """User traffic only; it owns the router's lifecycle (serve admin_app beside it, on the same loop)."""
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.add_routes([web.post("/rank", self.handle_rank), web.get("/healthz", healthz)])
        app.on_startup.append(self._on_startup)
        app.on_cleanup.append(self._on_cleanup)
        return app

    def admin_app(self) -> web.Application:
        """Weights, flush and metrics, for the operator, the traffic driver and Prometheus."""
        app = web.Application()
        app.add_routes([web.get("/weights", self.handle_get_weights), web.post("/flush", self.handle_flush),
                        web.get("/metrics", metrics_handler(self.registry))])
        if not self.read_only:
            app.add_routes([web.post("/weights", self.handle_set_weights)])
        return app


_UpstreamError = UpstreamError
