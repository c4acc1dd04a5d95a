"""The router's raw keep-alive HTTP client against real aiohttp servers."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web

from cambrian.online.runner import BackgroundApp
from cambrian.online.upstream import UpstreamPool, parse_http_url


async def _echo(request: web.Request) -> web.Response:
    return web.Response(body=b'{"got":' + await request.read() + b"}", content_type="application/json")


async def _chunked(request: web.Request) -> web.StreamResponse:
    await request.read()
    resp = web.StreamResponse()
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    for part in (b'{"a":', b"[1,2,3]", b"}"):
        await resp.write(part)
    await resp.write_eof()
    return resp


async def _fail(request: web.Request) -> web.Response:
    return web.json_response({"error": "no"}, status=400)


def _app() -> web.Application:
    app = web.Application()
    app.add_routes([web.post("/echo", _echo), web.post("/chunked", _chunked), web.post("/fail", _fail)])
    return app


def test_post_reuse_chunked_errors_and_stale_connections():
    with BackgroundApp(_app) as srv:
        async def go():
            pool = UpstreamPool(timeout=5)
            host, port = "127.0.0.1", srv.port
            for i in range(5):
                assert await pool.post(host, port, "/echo", b"[%d]" % i) == (200, b'{"got":[%d]}' % i)
            assert len(pool._idle[(host, port)]) == 1  # one connection, reused
            results = await asyncio.gather(*(pool.post(host, port, "/echo", b"%d" % i) for i in range(20)))
            assert [r[1] for r in results] == [b'{"got":%d}' % i for i in range(20)]
            assert await pool.post(host, port, "/chunked", b"{}") == (200, b'{"a":[1,2,3]}')
            status, body = await pool.post(host, port, "/fail", b"{}")
            assert status == 400 and b"no" in body
            # the server side drops every idle connection: the next post retries on a fresh one
            for _, w in pool._idle[(host, port)]:
                w.transport.abort()
            assert (await pool.post(host, port, "/echo", b"1"))[0] == 200
            await pool.close()
            with pytest.raises(OSError):
                await UpstreamPool(timeout=5).post("127.0.0.1", 9, "/x", b"{}")

        asyncio.run(go())


def test_only_plain_http():
    assert parse_http_url("http://127.0.0.1:8080/rank") == ("127.0.0.1", 8080, "/rank")
    with pytest.raises(ValueError, match="only http"):
        parse_http_url("https://x/rank")
