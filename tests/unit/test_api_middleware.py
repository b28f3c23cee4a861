"""Tier 1: the API middleware on a small real ASGI app: request ids, body limits, content
types, overload shedding, version and deprecation headers, and a JSON 500 without internals."""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import date
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route

from slipway.api.middleware import (
    ApiMiddleware,
    Deprecated,
    PathGuard,
    RequestIdFilter,
    StartDeadline,
)

pytestmark = pytest.mark.anyio
GATE = asyncio.Event()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def echo(request: Request) -> JSONResponse:
    body = await request.body()
    return JSONResponse({"bytes": len(body), "id": request.state.request_id})


async def slow(request: Request) -> JSONResponse:
    await GATE.wait()
    return JSONResponse({})


async def boom(request: Request) -> JSONResponse:
    raise RuntimeError("secret internals")


def client(deprecated: dict[str, Deprecated] | None = None) -> httpx.AsyncClient:
    """The middleware where the service has it: inside the app's error handling."""
    app = Starlette(
        routes=[
            Route("/echo", echo, methods=["GET", "POST"]),
            Route("/old", echo),
            Route("/slow", slow),
            Route("/boom", boom),
        ],
        middleware=[
            Middleware(ApiMiddleware, max_body_bytes=100, max_concurrency=2, deprecated=deprecated)
        ],
    )
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app, raise_app_exceptions=False), base_url="http://test"
    )


async def test_request_ids_are_echoed_or_generated_and_versions_sent() -> None:
    async with client() as c:
        given = await c.get("/echo", headers={"X-Request-ID": "abc-123"})
        assert given.headers["x-request-id"] == "abc-123" == given.json()["id"]
        made = await c.get("/echo", headers={"X-Request-ID": "bad id with spaces\n"})
        assert len(made.headers["x-request-id"]) == 32 and made.headers["x-api-version"] == "v1"
        assert made.headers["x-slipway-version"]


async def test_bodies_must_be_json_and_small() -> None:
    async with client() as c:
        ok = await c.post("/echo", json={"a": 1})
        assert ok.status_code == 200 and ok.json()["bytes"] == len(b'{"a":1}')
        assert (
            await c.post(
                "/echo",
                content=b"a=1",
                headers={"content-type": "application/x-www-form-urlencoded"},
            )
        ).status_code == 415
        assert (await c.post("/echo", content=b"{}")).status_code == 415  # no content type
        big = await c.post("/echo", json={"a": "x" * 200})
        assert big.status_code == 413 and "SLIPWAY_MAX_BODY_BYTES" in big.json()["error"]["message"]


async def test_a_streamed_body_over_the_limit_is_cut_off() -> None:
    async def chunks():  # type: ignore[no-untyped-def]
        for _ in range(10):
            yield b"x" * 30

    async with client() as c:
        r = await c.post("/echo", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413  # the app's HTTPException handler renders it (JSON in ours)


async def test_overload_is_a_503_with_retry_after() -> None:
    GATE.clear()
    async with client() as c:
        held = [asyncio.create_task(c.get("/slow")) for _ in range(2)]
        await asyncio.sleep(0.1)
        shed = await c.get("/echo")
        GATE.set()
        assert [r.status_code for r in await asyncio.gather(*held)] == [200, 200]
    assert shed.status_code == 503 and shed.headers["retry-after"] == "1"
    assert shed.json()["error"]["code"] == "overloaded"


async def test_failures_are_a_json_500_without_internals(caplog: pytest.LogCaptureFixture) -> None:
    async with client() as c:
        with caplog.at_level(logging.ERROR, logger="slipway.api"):
            r = await c.get("/boom", headers={"X-Request-ID": "req-9"})
    assert r.status_code == 500 and r.headers["x-request-id"] == "req-9"
    assert "secret" not in r.text and r.json()["error"]["type"] == "server_error"
    assert "secret internals" in caplog.text


async def test_deprecated_routes_announce_their_sunset() -> None:
    gone = Deprecated(since=date(2026, 11, 1), sunset=date(2027, 6, 30), successor="/new")
    async with client({"/old": gone}) as c:
        old, new = await c.get("/old"), await c.get("/echo")
    assert old.headers["deprecation"] == "@1793491200"
    assert old.headers["sunset"] == "Wed, 30 Jun 2027 00:00:00 GMT"
    assert old.headers["link"] == '</new>; rel="successor-version"'
    assert "deprecation" not in new.headers


def test_log_records_carry_the_request_id() -> None:
    record = logging.LogRecord("slipway.x", logging.INFO, __file__, 1, "m", None, None)
    assert RequestIdFilter().filter(record) and record.request_id == "-"
    assert json.dumps({"id": record.request_id})


async def test_a_path_with_a_control_character_is_a_json_400_before_routing() -> None:
    async def found(request: Request) -> JSONResponse:
        return JSONResponse({"path": request.url.path})

    inner = Starlette(routes=[Route("/v1/{rest:path}", found)])

    def served(guarded: bool) -> httpx.AsyncClient:
        outer = Starlette(
            routes=[Mount("/", inner)], middleware=[Middleware(PathGuard)] if guarded else []
        )
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=outer), base_url="http://t")

    async with served(False) as bare:  # what BentoML's outer router does with such a path
        r = await bare.get("/v1/graph/entities/a%0Ab/similar")
        assert r.status_code == 404 and r.headers["content-type"].startswith("text/plain")
    async with served(True) as guarded:
        for path in ("/v1/graph/entities/a%0Ab/similar", "/v1/x%00", "/v1/%7F"):
            r = await guarded.get(path)
            assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_path", path
        ok = await guarded.get("/v1/graph/entities/a%20b")
        assert ok.status_code == 200 and ok.json()["path"] == "/v1/graph/entities/a b"


def _live_timers(loop: asyncio.AbstractEventLoop) -> int:
    """Timers still armed on an asyncio loop (cancelled ones wait there until cleaned up)."""
    return sum(not h.cancelled() for h in loop._scheduled)  # type: ignore[attr-defined]


async def _plain(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


async def test_the_start_deadline_leaves_no_timer_behind_a_finished_request() -> None:
    loop = asyncio.get_running_loop()
    before = _live_timers(loop)
    app = StartDeadline(_plain, timeout=300)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://t"
    ) as client:
        for _ in range(50):
            assert (await client.get("/")).text == "ok"
    # BentoML's TimeoutMiddleware left 50 timers here, each holding its request for 300 s
    assert _live_timers(loop) == before


async def test_a_response_that_does_not_start_in_time_is_a_json_504_and_is_cancelled() -> None:
    cancelled = asyncio.Event()

    async def slow(scope: Any, receive: Any, send: Any) -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        await _plain(scope, receive, send)

    app = StartDeadline(slow, timeout=0.05)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://t"
    ) as client:
        r = await client.get("/")
    assert r.status_code == 504 and r.json()["error"]["code"] == "timeout"
    assert "Retry-After" in r.headers
    await asyncio.wait_for(cancelled.wait(), 10)  # the app was cancelled, not left running


async def test_a_started_response_runs_past_the_start_deadline() -> None:
    async def streaming(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for piece in (b"a", b"b", b"c"):
            await asyncio.sleep(0.05)
            await send({"type": "http.response.body", "body": piece, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    app = StartDeadline(streaming, timeout=0.02)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://t"
    ) as client:
        r = await client.get("/")
    assert r.status_code == 200 and r.text == "abc"


async def test_an_app_that_ends_without_answering_does_not_wait_for_the_deadline() -> None:
    async def silent(scope: Any, receive: Any, send: Any) -> None:
        return None

    sent: list[Any] = []

    async def send(message: Any) -> None:
        sent.append(message)

    app = StartDeadline(silent, timeout=3600)
    # a hang check, not a timing: without the fix this waits the whole hour
    await asyncio.wait_for(app({"type": "http"}, None, send), 10)
    assert sent == []
    await app({"type": "lifespan"}, None, send)  # other scopes pass straight through


def test_bentoml_builds_its_services_with_the_start_deadline() -> None:
    from bentoml._internal.server.http import traffic

    import bento.service  # noqa: F401  (replaces BentoML's middleware on import)

    assert traffic.TimeoutMiddleware is StartDeadline
