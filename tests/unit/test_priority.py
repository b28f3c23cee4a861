"""Tier 1: compute threads run below the event loop (Linux keeps a niceness per thread)."""

from __future__ import annotations

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
