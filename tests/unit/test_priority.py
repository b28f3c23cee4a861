"""Tier 1: compute threads run below the event loop (Linux keeps a niceness per thread)."""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path

import pytest

from slipway.embedding import OnnxEmbedder
from slipway.embedding.batcher import ContinuousBatcher
from slipway.priority import built_below_event_loops, thread_niceness


def _tasks() -> set[int]:
    return {int(t) for t in os.listdir("/proc/self/task")}


def test_threads_a_model_starts_inherit_the_raised_niceness(tiny_onnx_embedder: Path) -> None:
    base = thread_niceness(threading.get_native_id())
    before = _tasks()

    def build() -> ContinuousBatcher:
        return ContinuousBatcher(OnnxEmbedder(tiny_onnx_embedder, threads=2), 512)

    batcher = built_below_event_loops(5, build)
    started = _tasks() - before  # onnxruntime's intra-op pool and the batcher's thread
    assert started
    assert {thread_niceness(t) for t in started} == {min(base + 5, 19)}
    assert thread_niceness(threading.get_native_id()) == base  # the caller keeps its own
    assert built_below_event_loops(0, lambda: 7) == 7
    batcher.close()


def test_a_failed_build_raises_in_the_caller() -> None:
    def fail() -> None:
        raise ValueError("no model here")

    with pytest.raises(ValueError, match="no model here"):
        built_below_event_loops(3, fail)


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="SCHED_IDLE is Linux's")
def test_an_idle_build_runs_every_thread_it_starts_under_sched_idle(
    tiny_onnx_embedder: Path,
) -> None:
    caller = os.sched_getscheduler(0)
    before = _tasks()

    def build() -> ContinuousBatcher:
        return ContinuousBatcher(OnnxEmbedder(tiny_onnx_embedder, threads=2), 512)

    batcher = built_below_event_loops(19, build, idle=True)
    started = _tasks() - before
    assert started
    assert {os.sched_getscheduler(t) for t in started} == {os.SCHED_IDLE}
    assert os.sched_getscheduler(0) == caller  # the caller keeps its own policy
    vectors = asyncio.run(batcher.embed(["runs at idle priority"]))
    assert vectors.shape[0] == 1
    batcher.close()
