"""Streams between a blocking producer, a service and an event loop."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import Executor
from typing import Any


async def iterate_in_thread(
    factory: Callable[[], Iterator[Any]], executor: Executor | None = None
) -> AsyncIterator[Any]:
    """Items of a blocking iterator, produced in a thread of ``executor`` (default: the
    loop's), for an event loop. A consumer that stops closes the iterator at its next item."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue(maxsize=64)
    stop = threading.Event()

    def produce() -> None:
        try:
            items = factory()
            try:
                for item in items:
                    if stop.is_set():
                        return
                    asyncio.run_coroutine_threadsafe(queue.put(("item", item)), loop).result()
            finally:  # a generator's own clean-up (a decoder frees the request) runs now
                close = getattr(items, "close", None)
                if close is not None:
                    close()
            asyncio.run_coroutine_threadsafe(queue.put(("end", None)), loop).result()
        except BaseException as exc:
            asyncio.run_coroutine_threadsafe(queue.put(("error", exc)), loop).result()

    loop.run_in_executor(executor, produce)
    try:
        while True:
            kind, value = await queue.get()
            if kind == "end":
                break
            if kind == "error":
                raise value
            yield value
    finally:  # a client that went away stops the producer at its next item
        stop.set()
        while not queue.empty():
            queue.get_nowait()


async def ndjson_events(chunks: AsyncIterator[str]) -> AsyncIterator[dict[str, Any]]:
    """Parse newline-delimited JSON from a stream of text chunks cut anywhere."""
    buffer = ""
    async for chunk in chunks:
        buffer += chunk
        *lines, buffer = buffer.split("\n")
        for line in lines:
            if line.strip():
                yield json.loads(line)
    if buffer.strip():
        yield json.loads(buffer)
