"""Liveness that tells the truth: a thread of its own probes the worker's event loop and its
worker threads every second. While a probe has waited longer than ``stall_seconds`` the worker
is not alive: ``/livez`` fails and the orchestrator restarts it (a loop stuck in a blocking call,
or a pool whose every thread waits, would otherwise answer 200 for ever)."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass

import anyio.to_thread

logger = logging.getLogger(__name__)


@dataclass
class _Probe:
    """One kind of probe: when the pending one was sent (None when none is pending)."""

    name: str
    sent: float | None = None
    last_seen: float = 0.0

    def waited(self, now: float) -> float:
        """Seconds the pending probe has waited (0 when none is pending)."""
        return 0.0 if self.sent is None else now - self.sent


class Watchdog:
    """Probes an event loop, its default executor and anyio's worker threads."""

    def __init__(self, stall_seconds: float, interval: float = 1.0) -> None:
        self.stall_seconds = stall_seconds
        self.interval = interval
        self.probes = {name: _Probe(name) for name in ("loop", "executor", "threads")}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._tasks: set[asyncio.Future[None]] = set()

    def ensure_started(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start probing ``loop`` (once; later calls do nothing)."""
        with self._lock:
            if self._thread is not None:
                return
            self._loop = loop
            self._thread = threading.Thread(target=self._run, name="slipway-watchdog", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop probing."""
        self._stop.set()

    def stalled(self) -> list[str]:
        """The probes that waited longer than ``stall_seconds`` (empty while healthy)."""
        now = time.monotonic()
        return [p.name for p in self.probes.values() if p.waited(now) > self.stall_seconds]

    def alive(self) -> bool:
        """Whether the loop and its threads made progress lately."""
        stalled = self.stalled()
        if stalled:
            logger.error(
                "Not alive: no progress of %s for over %s s", ", ".join(stalled), self.stall_seconds
            )
        return not stalled

    def _run(self) -> None:
        loop = self._loop
        assert loop is not None
        while not self._stop.wait(self.interval):
            if loop.is_closed():
                return
            now = time.monotonic()
            for probe in self.probes.values():
                if probe.sent is None:
                    probe.sent = now
                    try:
                        loop.call_soon_threadsafe(self._send, probe)
                    except RuntimeError:  # the loop closed meanwhile
                        return

    def _send(self, probe: _Probe) -> None:
        """On the loop: the loop probe is answered here; the thread probes are queued."""
        if probe.name == "loop":
            self._seen(probe)
        elif probe.name == "executor":
            asyncio.get_running_loop().run_in_executor(None, self._seen, probe)
        else:
            task = asyncio.ensure_future(anyio.to_thread.run_sync(self._seen, probe))
            self._tasks.add(task)  # a task nobody references may be collected mid-flight
            task.add_done_callback(self._tasks.discard)

    @staticmethod
    def _seen(probe: _Probe) -> None:
        probe.last_seen = time.monotonic()
        probe.sent = None
