"""Latency and throughput of a candidate against its baseline, measured interleaved."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Timing:
    """Per-call latencies (seconds) and the work done per call."""

    name: str
    latencies: tuple[float, ...]
    units_per_call: float

    @property
    def throughput(self) -> float:
        """Units (texts, tokens) per second over all calls."""
        return self.units_per_call * len(self.latencies) / max(sum(self.latencies), 1e-12)

    def percentile(self, q: float) -> float:
        """Latency percentile in milliseconds."""
        return float(np.percentile(self.latencies, q) * 1000.0)

    def as_metrics(self) -> dict[str, float]:
        """Flat metrics for tracking."""
        return {
            f"{self.name}_throughput": self.throughput,
            f"{self.name}_p50_ms": self.percentile(50),
            f"{self.name}_p95_ms": self.percentile(95),
        }


def interleaved(
    candidate: Callable[[], float],
    baseline: Callable[[], float],
    rounds: int,
    warmup: int = 1,
    names: tuple[str, str] = ("onnx", "torch"),
) -> tuple[Timing, Timing]:
    """Time both callables alternately; each returns the units of work it did (texts, tokens).

    Alternating cancels most of the drift of a shared, noisy machine.
    """
    for _ in range(warmup):
        candidate()
        baseline()
    lat: dict[str, list[float]] = {names[0]: [], names[1]: []}
    units: dict[str, float] = {names[0]: 0.0, names[1]: 0.0}
    for i in range(rounds):
        order = ((names[0], candidate), (names[1], baseline))
        for name, fn in order if i % 2 == 0 else order[::-1]:
            start = time.perf_counter()
            units[name] = float(fn())
            lat[name].append(time.perf_counter() - start)
    return (
        Timing(names[0], tuple(lat[names[0]]), units[names[0]]),
        Timing(names[1], tuple(lat[names[1]]), units[names[1]]),
    )


def latency_plot_png(timings: list[Timing], path: str, title: str) -> None:
    """Box plot of latency distributions (ms), written to ``path``. A bare ``Figure`` (no
    pyplot): it leaves the process's backend alone, e.g. a notebook's inline one."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3.5))
    ax = fig.subplots()
    ax.boxplot(
        [np.array(t.latencies) * 1000 for t in timings], tick_labels=[t.name for t in timings]
    )
    ax.set_ylabel("latency per call (ms)")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
