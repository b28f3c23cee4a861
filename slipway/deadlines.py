"""Bounded waits: past its deadline a piece of work ends with a 504 (with Retry-After) and is
counted by stage, so no request can hold a concurrency slot for ever."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar

from slipway.api import metrics
from slipway.api.errors import timed_out

T = TypeVar("T")


async def bounded(work: Awaitable[T], seconds: float, stage: str, what: str) -> T:
    """``work`` within ``seconds``; past it a 504 (with Retry-After) naming ``what``, counted
    by ``stage`` (the work is cancelled; a worker thread it started finishes on its own)."""
    try:
        async with asyncio.timeout(seconds):
            return await work
    except TimeoutError as exc:
        metrics.timed_out(stage)
        raise timed_out(what, seconds) from exc


async def bounded_events(
    events: AsyncIterator[dict[str, Any]], seconds: float, what: str
) -> AsyncIterator[dict[str, Any]]:
    """The items of ``events``, each within ``seconds`` of the last (a stalled stream ends
    with a 504 before its first item, or is cut off after it)."""
    iterator = aiter(events)
    try:
        while True:
            try:
                event = await bounded(anext(iterator), seconds, "generator", what)
            except StopAsyncIteration:
                return
            yield event
    finally:
        close = getattr(iterator, "aclose", None)
        if close is not None:
            await close()
