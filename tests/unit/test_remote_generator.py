"""Tier 1: the API's client of the generator service: a full generator queue is a 503 with
Retry-After before any byte of a stream; a pooled connection the service closed as the
request went out is sent again once, on a fresh one."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from bento.service import _RemoteGenerator
from slipway.api.errors import ApiError
from slipway.generation import Request, Sampling

REQUEST = Request(Sampling(max_new_tokens=4), prompt="hi")
EVENTS = [{"text": "a"}, {"text": "b"}, {"finish_reason": "stop"}]


class Service:
    """``to_async.stream`` as BentoML's client gives it: NDJSON text chunks, after failures."""

    def __init__(self, lines: list[dict[str, Any]], failures: list[BaseException]) -> None:
        self.lines, self.failures, self.calls = lines, failures, 0
        self.to_async = self

    async def stream(self, _request: Any) -> AsyncIterator[str]:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        for line in self.lines:
            yield json.dumps(line) + "\n"


async def _collect(service: Service) -> list[dict[str, Any]]:
    return [event async for event in _RemoteGenerator(service).events(REQUEST)]


def test_a_busy_generator_is_a_503_with_retry_after() -> None:
    service = Service([{"error": {"code": "busy", "message": "queue full"}}], [])
    with pytest.raises(ApiError) as caught:
        asyncio.run(_collect(service))
    assert caught.value.status == 503
    assert caught.value.code == "overloaded"
    assert "Retry-After" in caught.value.headers()


def test_a_stale_connection_is_resent_once_then_reported() -> None:
    resent = Service(EVENTS, [aiohttp.ServerDisconnectedError()])
    assert asyncio.run(_collect(resent)) == EVENTS
    assert resent.calls == 2
    twice = Service(EVENTS, [aiohttp.ServerDisconnectedError(), aiohttp.ServerDisconnectedError()])
    with pytest.raises(ApiError) as caught:
        asyncio.run(_collect(twice))
    assert (caught.value.status, caught.value.code) == (503, "backend_unavailable")
    assert twice.calls == 2
