"""CPU priority of compute threads: the event loops that accept, check and shed requests go
before the threads that encode and decode when the CPU is short.

Under overload the shedding path (read a request, check its key, answer 503) must keep up
with the arrival rate, or requests pile up in sockets until their clients give up. On a host
where the encoder and the decoder can take every core, that path needs the CPU first. Linux
keeps a niceness per thread, and a thread starts with its creator's: models built in a thread
whose niceness was raised run all their threads (onnxruntime's pools, a batcher's or decoder's
thread) at that niceness, while the event loop keeps its own."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def built_below_event_loops(niceness: int, build: Callable[[], T]) -> T:
    """``build()``, run in a thread whose niceness is raised by ``niceness`` (0: as is), so
    the threads it starts inherit the lower priority. Raising niceness needs no privilege."""
    if niceness == 0:
        return build()
    result: list[T] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            os.nice(niceness)  # this thread only (Linux); the threads it starts inherit it
            result.append(build())
        except BaseException as exc:  # handed to the caller below
            failure.append(exc)

    thread = threading.Thread(target=run, name="slipway-build")
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return result[0]


def thread_niceness(native_id: int) -> int:
    """The niceness of a thread of this process (Linux; for tests and diagnostics)."""
    return os.getpriority(os.PRIO_PROCESS, native_id)
