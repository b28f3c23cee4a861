"""Pauses of Python's cyclic garbage collector, measured and frozen out.

A collection of the oldest generation walks every tracked object of the process with the GIL
held: in a worker that holds a tokenizer, an index and a graph (millions of objects built at
start-up) it stops the event loop and every thread for hundreds of milliseconds, and every
request in flight waits that long. :func:`freeze_startup_objects` moves what start-up built to
the permanent generation (``gc.freeze``, as CPython's documentation suggests for long-lived
servers), so that later collections walk only what requests allocate; :class:`PauseWatch`
times every collection (``gc.callbacks``) for a metric and logs the long ones."""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)


def freeze_startup_objects() -> int:
    """Collect once, then exempt every surviving object from later collections; how many
    objects were frozen."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


class PauseWatch:
    """Calls ``on_pause(generation, seconds)`` after every collection; a pause of at least
    ``log_over`` seconds is also logged with what it collected."""

    def __init__(self, on_pause: Callable[[int, float], None], log_over: float = 0.1) -> None:
        self.on_pause, self.log_over = on_pause, log_over
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        seconds = time.perf_counter() - self._started
        generation = int(info.get("generation", 0))
        self.on_pause(generation, seconds)
        if seconds >= self.log_over:
            logger.warning(
                "Garbage collection of generation %d paused the worker for %.0f ms "
                "(%d collected, %d frozen)",
                generation,
                seconds * 1e3,
                info.get("collected", 0),
                gc.get_freeze_count(),
            )

    def install(self) -> PauseWatch:
        """Registered in ``gc.callbacks`` (once)."""
        if self not in gc.callbacks:
            gc.callbacks.append(self)
        return self

    def remove(self) -> None:
        """Out of ``gc.callbacks``."""
        if self in gc.callbacks:
            gc.callbacks.remove(self)
