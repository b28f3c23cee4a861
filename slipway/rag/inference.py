"""The inference facade every route and use case goes through: embeddings and generations from
the model clients, through the result cache, each call within its deadline; token counts in
worker threads when the texts are long (tokenizing a large body would stall the event loop)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import numpy as np

from slipway.deadlines import bounded, bounded_events
from slipway.generation import Request
from slipway.resources import Resources
from slipway.wire import GenerationRequest

# Charges tokens to the caller's budget; raises (429) when it cannot pay.
Charge = Callable[[int], Awaitable[None]]


async def embed_texts(res: Resources, texts: list[str]) -> np.ndarray:
    """Vectors for ``texts``: cached ones from the cache, the rest in one encoder call."""
    versions = res.versions()
    keys: list[str] = []
    found: dict[int, list[float]] = {}
    for i, text in enumerate(texts):
        key, value = res.cached("embed", versions, text)
        keys.append(key)
        if value is not None:
            found[i] = value
    missing = [i for i in range(len(texts)) if i not in found]
    if missing:
        vectors = np.asarray(
            await bounded(
                res.embedder.embed([texts[i] for i in missing]),
                res.serve.encoder_timeout_s,
                "encoder",
                "encoder",
            ),
            np.float32,
        )
        for i, vector in zip(missing, vectors, strict=True):
            found[i] = vector.tolist()
            res.remember(keys[i], found[i])
    return np.asarray([found[i] for i in range(len(texts))], dtype=np.float32)


async def generate_text(res: Resources, request: Request) -> dict[str, Any]:
    """A whole generation; greedy ones are cached per model version."""
    cacheable = request.sampling.greedy
    key, value = (
        res.cached("generate", res.versions(), GenerationRequest.of(request).model_dump())
        if cacheable
        else ("", None)
    )
    if value is not None:
        return dict(value)
    out = await bounded(
        res.generator.complete(request), res.serve.generator_timeout_s, "generator", "generator"
    )
    if cacheable:
        res.remember(key, out)
    return out


async def generation_events(res: Resources, request: Request) -> AsyncIterator[dict[str, Any]]:
    """A generation's events, each within the generator's deadline of the last. The first is
    awaited before this returns, so a generator that is unavailable or late answers a JSON
    503/504 before any response starts, not a stream broken after its headers."""
    events = bounded_events(
        res.generator.events(request), res.serve.generator_timeout_s, "generator"
    )
    try:
        first = await anext(events)
    except StopAsyncIteration:
        return _events([], events)
    return _events([first], events)


async def _events(
    head: list[dict[str, Any]], rest: AsyncIterator[dict[str, Any]]
) -> AsyncIterator[dict[str, Any]]:
    for event in head:
        yield event
    async for event in rest:
        yield event


# Up to this many characters, counting tokens on the event loop (about 0.3 ms) costs less than
# the hop to a worker thread and back; a larger body is counted in a thread.
INLINE_CHARS = 1024


async def embed_tokens(res: Resources, texts: Sequence[str]) -> int:
    """Encoder tokens of ``texts``, counted in a worker thread unless they are short."""
    return await _count(texts, lambda: res.embed_tokens(texts))


async def gen_tokens(res: Resources, *texts: str, per_text: int = 0) -> int:
    """Generator tokens of ``texts`` (plus ``per_text`` each), counted in a worker thread
    unless they are short."""
    return await _count(texts, lambda: sum(res.gen_tokens(t) + per_text for t in texts))


async def _count(texts: Sequence[str], count: Callable[[], int]) -> int:
    if sum(len(t) for t in texts) <= INLINE_CHARS:
        return count()
    return await asyncio.to_thread(count)
