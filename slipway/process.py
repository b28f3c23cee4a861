"""Child processes Slipway owns: started in a session of their own, stopped with everything
they started (workers included), never left behind re-parented to init."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence

import psutil

logger = logging.getLogger(__name__)


def session_members(sid: int) -> list[psutil.Process]:
    """Live processes of session ``sid`` (the processes a session leader started, and theirs,
    wherever they were re-parented)."""
    members = []
    for proc in psutil.process_iter():
        try:
            if (
                proc.pid != os.getpid()
                and os.getsid(proc.pid) == sid
                and proc.status() != psutil.STATUS_ZOMBIE
            ):
                members.append(proc)
        except (ProcessLookupError, PermissionError, psutil.Error):
            continue
    return members


def stop_session(sid: int, grace_seconds: float = 5.0) -> int:
    """SIGTERM every process of session ``sid``, SIGKILL those alive after ``grace_seconds``;
    the number of processes that had to be killed."""
    members = session_members(sid)
    for proc in members:
        with contextlib.suppress(psutil.Error):
            proc.terminate()
    _, alive = psutil.wait_procs(members, timeout=grace_seconds)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(alive, timeout=grace_seconds)
    return len(alive)


def run_owned(
    cmd: Sequence[str], env: Mapping[str, str] | None = None, drain_seconds: float = 30.0
) -> int:
    """Run ``cmd`` in a new session until it exits or this process gets SIGTERM/SIGINT; then
    forward SIGTERM (the server drains its in-flight requests), wait up to ``drain_seconds``,
    and stop whatever of the session is left. The exit status of ``cmd`` (128 + the signal
    when it had to be stopped)."""
    child = subprocess.Popen(
        list(cmd), env=dict(env) if env is not None else None, start_new_session=True
    )
    got: list[int] = []
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        got.append(signum)
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        while child.poll() is None and not stop.wait(0.2):
            pass
        if child.poll() is None:
            logger.info(
                "Stopping the server (signal %s): draining for up to %s s",
                got[0] if got else "-",
                drain_seconds,
            )
            child.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + drain_seconds
            try:
                child.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                logger.warning("The server did not stop within %s s; killing it", drain_seconds)
    finally:
        killed = stop_session(child.pid)
        if killed:
            logger.warning("Killed %d process(es) the server left behind", killed)
        if child.poll() is None:
            child.kill()
            child.wait()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    code = child.returncode
    if got and code is not None and code < 0:
        return 128 + got[0]
    return code if code is not None else 1
