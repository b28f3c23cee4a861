"""Tier 1: garbage-collector pauses are measured, and start-up objects are frozen out."""

from __future__ import annotations

import gc
import logging

import pytest

from slipway.gcwatch import PauseWatch, freeze_startup_objects


def test_every_collection_is_reported_with_its_generation() -> None:
    seen: list[tuple[int, float]] = []
    watch = PauseWatch(lambda generation, seconds: seen.append((generation, seconds))).install()
    try:
        watch.install()  # once only
        assert gc.callbacks.count(watch) == 1
        gc.collect(0)
        gc.collect(2)
    finally:
        watch.remove()
    assert watch not in gc.callbacks
    assert [g for g, _ in seen][-2:] == [0, 2]
    assert all(seconds >= 0 for _, seconds in seen)


def test_a_long_pause_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    watch = PauseWatch(lambda _g, _s: None, log_over=0.0).install()
    try:
        with caplog.at_level(logging.WARNING, logger="slipway.gcwatch"):
            gc.collect(1)
    finally:
        watch.remove()
    assert "Garbage collection of generation 1 paused the worker" in caplog.text


def test_freezing_moves_live_objects_out_of_later_collections() -> None:
    kept = [[i] for i in range(10_000)]  # tracked containers built "at start-up"
    try:
        frozen = freeze_startup_objects()
        assert frozen >= len(kept)
        tracked = {id(o) for o in gc.get_objects()}
        assert not any(id(x) in tracked for x in kept[:100])  # no generation holds them
    finally:
        gc.unfreeze()
