"""CPU priority of compute threads: the event loops that accept, check and shed requests go
before the threads that encode and decode when the CPU is short.

Under overload the shedding path (read a request, check its key, answer 503) must keep up
with the arrival rate, or requests pile up in sockets until their clients give up. On a host
where the encoder and the decoder can take every core, that path needs the CPU first. Linux
keeps a niceness per thread, and a thread starts with its creator's: models built in a thread
whose niceness was raised run all their threads (onnxruntime's pools, a batcher's or decoder's
thread) at that niceness, while the event loop keeps its own.

The decoder goes lower still, under ``SCHED_IDLE``: a prefill of a long answer prompt keeps
both of its threads busy for seconds, and at any niceness the encoder's short runs then wait
a scheduler tick for each of their parallel steps (a query took 300 ms of wall time for 4 ms
of CPU in the soak). A thread that wakes on a core running a ``SCHED_IDLE`` thread takes it at
once, so searches and embeddings run as if the decoder were not there, and the decoder still
gets every cycle they leave."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def built_below_event_loops(niceness: int, build: Callable[[], T], idle: bool = False) -> T:
    """``build()``, run in a thread whose niceness is raised by ``niceness`` (0: as is), or
    under ``SCHED_IDLE`` when ``idle``, so the threads it starts inherit the lower priority.
    Neither needs a privilege."""
    if niceness == 0 and not idle:
        return build()
    result: list[T] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            if idle and hasattr(os, "SCHED_IDLE"):  # this thread only (Linux); the threads
                os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))  # it starts inherit it
            else:
                os.nice(niceness)
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
