"""Small helpers shared by the aiohttp services: JSON bodies with field-naming errors, /metrics."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest


class BadRequest(ValueError):
    """The request body is malformed; the message names the field."""


def is_count(value: Any) -> bool:
    """An integer >= 0 (JSON's true and false are not numbers here)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


async def read_json(request: web.Request) -> dict[str, Any]:
    return parse_json_object(await request.read())


def parse_json_object(raw: bytes) -> dict[str, Any]:
    """A request body that must be a JSON object; BadRequest names what is wrong."""
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise BadRequest(f"body: not valid JSON ({exc})") from None
    if not isinstance(body, dict):
        raise BadRequest("body: must be a JSON object")
    return body


def json_response(payload: Any, status: int = 200) -> web.Response:
    # separators: smaller bodies, measurably faster for slates of 100 candidates
    return web.Response(body=json.dumps(payload, separators=(",", ":")).encode(), status=status,
                        content_type="application/json")


def metrics_handler(registry: CollectorRegistry):
    async def handler(_: web.Request) -> web.Response:
        resp = web.Response(body=generate_latest(registry))
        resp.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return resp

    return handler


async def healthz(_: web.Request) -> web.Response:
    return web.json_response({"ok": True})
