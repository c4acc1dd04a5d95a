"""Model server: one bundle behind POST /rank, plus /healthz; /metrics on its admin port (`admin_app`), never on
the port users reach.

POST /rank  {"user_ids": [n], "candidates": [[C] * n], "k": optional int}
         -> {"slates": [[k] * n] item ids best first, "scores": [[k] * n], "model": str, "arm": str}

Scoring runs on the event loop thread: a batch is a few hundred microseconds of torch work in the bundle's
contained host process plus a pipe round trip, and a hop to a thread pool would cost about as much as it saves.
"""

from __future__ import annotations

import time
from typing import Any, Protocol

import numpy as np
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram

from cambrian.online.httpjson import BadRequest, error, healthz, json_response, metrics_handler, read_json

# Sub-millisecond resolution: the latency budget of the whole router is 1 ms.
LATENCY_BUCKETS = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Scorer(Protocol):
    def score(self, user_ids: np.ndarray, candidates: np.ndarray) -> np.ndarray: ...


def parse_rank_request(body: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, int | None]:
    """Validate a /rank body; errors name the field."""
    if "user_ids" not in body:
        raise BadRequest("user_ids: required")
    if "candidates" not in body:
        raise BadRequest("candidates: required")
    try:
        users = np.asarray(body["user_ids"], dtype=np.int64)
    except (TypeError, ValueError, OverflowError):
        raise BadRequest("user_ids: must be a list of integers") from None
    if users.ndim != 1:
        raise BadRequest("user_ids: must be a flat list of integers")
    try:
        cands = np.asarray(body["candidates"], dtype=np.int64)
    except (TypeError, ValueError, OverflowError):
        raise BadRequest("candidates: must be a list of equal-length lists of integers") from None
    if len(users) == 0:
        cands = cands.reshape(0, 0) if cands.size == 0 else cands
    if cands.ndim != 2 or cands.shape[0] != users.shape[0]:
        raise BadRequest(f"candidates: must have one row per user ({users.shape[0]}), got shape {list(cands.shape)}")
    k = body.get("k")
    if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
        raise BadRequest(f"k: must be a positive integer, got {k!r}")
    return users, cands, k


def rank(scorer: Scorer, users: np.ndarray, cands: np.ndarray, k: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Slates (item ids best first) and their scores; ties keep the retrieval order."""
    if len(users) == 0:
        return np.zeros((0, 0), np.int64), np.zeros((0, 0), np.float32)
    scores = np.asarray(scorer.score(users, cands), dtype=np.float32)
    if scores.shape != cands.shape:
        raise RuntimeError(f"model returned scores of shape {scores.shape} for candidates {cands.shape}")
    order = np.argsort(-scores, axis=1, kind="stable")
    if k is not None:
        order = order[:, :k]
    return np.take_along_axis(cands, order, axis=1), np.take_along_axis(scores, order, axis=1)


class ModelServer:
    def __init__(self, scorer: Scorer, model: str, arm: str, registry: CollectorRegistry | None = None):
        self.scorer, self.model, self.arm = scorer, model, arm
        self.registry = registry or CollectorRegistry()
        labels = ["model", "arm"]
        self.requests = Counter("cambrian_server_requests", "Rank requests served", labels, registry=self.registry)
        self.users = Counter("cambrian_server_users", "Users ranked (a request holds a batch)", labels,
                             registry=self.registry)
        self.errors = Counter("cambrian_server_errors", "Rank requests that failed", labels + ["code"],
                              registry=self.registry)
        self.latency = Histogram("cambrian_server_request_seconds", "Rank request handling time", labels,
                                 buckets=LATENCY_BUCKETS, registry=self.registry)
        self._lab = {"model": model, "arm": arm}
        # Create every series at 0 up front: a series born at its first request hides that request
        # from rate()/increase() in Prometheus.
        for code in ("400", "500"):
            self.errors.labels(model=model, arm=arm, code=code)
        for metric in (self.requests, self.users, self.latency):
            metric.labels(**self._lab)

    async def handle_rank(self, request: web.Request) -> web.Response:
        t0 = time.perf_counter()
        self.requests.labels(**self._lab).inc()
        try:
            users, cands, k = parse_rank_request(await read_json(request))
            try:
                slates, scores = rank(self.scorer, users, cands, k)
            except ValueError as exc:  # the bundle rejects ids outside its catalogue
                raise BadRequest(f"candidates: {exc}") from None
        except BadRequest as exc:
            self.errors.labels(**self._lab, code="400").inc()
            return error(400, str(exc))
        except Exception as exc:  # noqa: BLE001 - the client gets a 500, the counter records it
            self.errors.labels(**self._lab, code="500").inc()
            return error(500, f"{type(exc).__name__}: {exc}")
        self.users.labels(**self._lab).inc(len(users))
        resp = json_response({"slates": slates.tolist(), "scores": np.round(scores, 6).tolist(),
                              "model": self.model, "arm": self.arm})
        self.latency.labels(**self._lab).observe(time.perf_counter() - t0)
        return resp

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.add_routes([web.post("/rank", self.handle_rank), web.get("/healthz", healthz)])
        return app

    def admin_app(self) -> web.Application:
        app = web.Application()
        app.add_routes([web.get("/metrics", metrics_handler(self.registry))])
        return app


def bundle_server(bundle_dir: str, arm: str, sandbox: str = "auto") -> ModelServer:
    """A server for one bundle. Its exported program runs in a contained host process (trainer/host.py):
    this process only parses requests, checks ids and ranks the scores it gets back."""
    from cambrian.trainer.bundle import load_bundle

    bundle = load_bundle(bundle_dir, sandbox)  # type: ignore[arg-type]
    return ModelServer(bundle, model=bundle.fingerprint, arm=arm)
