"""The soak benchmark's pure parts (plan, classification, recovery, RESULT line) and the
benchmarks' server stop, which must end every process of the tree it started."""

from __future__ import annotations

import contextlib
import itertools
import math
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import psutil
import pytest

from bench.serve import Server, sse_data
from bench.soak import (
    HUNG,
    Record,
    codes,
    gc_pauses,
    kind,
    normalized,
    parse_capacity,
    parse_mix,
    phase_lengths,
    plan,
    rates,
    recovery_seconds,
    result_line,
    windows_within,
)


def test_mix_is_normalized_and_checked() -> None:
    assert parse_mix("search=2,embed=2") == {"search": 0.5, "embed": 0.5}
    assert parse_mix("search=1,chat=0") == {"search": 1.0}
    with pytest.raises(ValueError, match="unknown route"):
        parse_mix("serch=1")
    with pytest.raises(ValueError):
        parse_mix("search=0")


def test_plan_is_open_loop_bounded_and_per_phase() -> None:
    lengths = phase_lengths(100.0)
    assert lengths == pytest.approx([40.0, 20.0, 40.0])
    capacity = {"search": 20.0, "chat": 0.5, "embed": 0.0}
    mix = {"search": 0.5, "chat": 0.25, "embed": 0.25}
    assert rates(capacity, mix, 1.0) == {"search": 10.0, "chat": 0.125}  # no embed capacity
    shots = plan(capacity, lengths, [0.7, 3.0, 0.7], mix, seed=3)
    counts = Counter((s.phase, s.route) for s in shots)
    assert counts == {
        (0, "search"): 280,
        (1, "search"): 600,
        (2, "search"): 280,
        (0, "chat"): 4,
        (1, "chat"): 8,
        (2, "chat"): 4,
    }
    assert all(a.at <= b.at for a, b in itertools.pairwise(shots))
    bounds = [(0, 40), (40, 60), (60, 100)]
    assert all(bounds[s.phase][0] <= s.at < bounds[s.phase][1] for s in shots)
    assert plan(capacity, lengths, [0.7, 3.0, 0.7], mix, seed=3) == shots
    assert len(plan({"answer": 0.01}, lengths, [0.7, 3, 0.7], {"answer": 1.0})) == 3
    assert parse_capacity("2.5") == dict.fromkeys(("search", "answer", "embed", "chat"), 2.5)
    assert parse_capacity("search=30,chat=0.5") == {"search": 30.0, "chat": 0.5}


def test_kinds_and_codes() -> None:
    ok = Record("search", 0, 0.0, 200, 0.01)
    shed = Record("search", 0, 0.0, 503, 0.01, retry_after=True)
    bare = Record("search", 0, 0.0, 503, 0.01)
    hung = Record("chat", 0, 0.0, error="deadline")
    assert [kind(r) for r in (ok, shed, bare, hung)] == ["ok", "shed", "5xx", "hung"]
    assert kind(Record("embed", 0, 0.0, 200, 0.01, error="embeddings")) == "bad"
    assert kind(Record("embed", 0, 0.0, 429, 0.01, retry_after=True)) == "4xx"
    assert hung.status == HUNG and math.isinf(hung.latency)
    assert codes([ok, ok, shed, bare, hung]) == "200x2 503x1 503+RAx1 hung(deadline)x1"


def steady(
    start: float, stop: float, rate: float, latency: float, route: str = "search"
) -> list[Record]:
    n = round((stop - start) * rate)
    return [Record(route, 0, start + i / rate, 200, latency) for i in range(n)]


def test_recovery_is_measured_from_the_end_of_the_overload() -> None:
    records = (
        steady(0, 20, 20, 0.010)
        + steady(20, 30, 20, 0.500)  # overload: 50x slower
        + steady(30, 34, 20, 0.100)
        + steady(34, 60, 20, 0.011)
    )
    points = normalized(records, {"search": 0.010})
    assert windows_within(points, 0, 20) == 1.0
    # the trailing 2 s window holds no slow request once 36 s is reached
    assert recovery_seconds(points, 30.0, 60.0) == pytest.approx(6.0)
    # a relapse within the hold moves recovery past it: the window ending at 40 s is clean
    relapse = records + [Record("search", 0, 37.0 + i / 20, 200, 0.5) for i in range(20)]
    assert recovery_seconds(normalized(relapse, {"search": 0.010}), 30.0, 60.0) == (
        pytest.approx(10.0)
    )
    never = steady(0, 20, 20, 0.01) + steady(20, 60, 20, 0.5)
    assert math.isinf(recovery_seconds(normalized(never, {"search": 0.01}), 30.0, 60.0))
    sparse = [Record("answer", 0, t, 200, 1.0) for t in (10.0, 35.0, 50.0)]
    assert math.isnan(recovery_seconds(normalized(sparse, {"answer": 1.0}), 30.0, 60.0))


def test_a_failure_counts_as_infinitely_slow() -> None:
    records = steady(0, 40, 20, 0.01)
    records.append(Record("search", 0, 31.0, error="deadline"))
    points = normalized(records, {"search": 0.01})
    # the first trailing window without it: [31.25, 33.25)
    assert recovery_seconds(points, 30.0, 40.0) == pytest.approx(3.25)


def test_result_line() -> None:
    line = result_line(
        {
            "hung": 0,
            "other_5xx": 2,
            "recovery_s": 3.25,
            "rss_growth_mb": 1.0,
            "search_p99_ms": 40.0,
            "answer_p99_ms": math.nan,
            "embed_p99_ms": 20.04,
        }
    )
    assert line == (
        "RESULT hung=0 other_5xx=2 recovery_s=3.2 rss_growth_mb=1.0 "
        "search_p99_ms=40.0 answer_p99_ms=nan embed_p99_ms=20.0"
    )


def test_sse_lines() -> None:
    assert sse_data('data: {"text": "a"}') == {"text": "a"}
    assert sse_data("data: [DONE]") == "[DONE]"
    assert sse_data("") is None


# A top process that spawns workers (one ignores SIGTERM; one double-forks out of the tree)
# and exits on SIGTERM without stopping them: what `slipway serve` was reported to do.
LEAKY = textwrap.dedent("""
    import os, signal, subprocess, sys, time
    stubborn = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(300)"
    subprocess.Popen([sys.executable, "-c", stubborn])
    subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    if os.fork() == 0:  # an orphan: re-parented as soon as its parent exits
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
        os._exit(0)
    print("ready", flush=True)
    time.sleep(300)
""")


def test_stop_ends_the_whole_tree(tmp_path: Path) -> None:
    process = subprocess.Popen(
        [sys.executable, "-c", LEAKY], stdout=subprocess.PIPE, start_new_session=True
    )
    assert process.stdout is not None and process.stdout.readline().strip() == b"ready"
    server = Server("leaky", 0, tmp_path / "log", process)
    deadline = time.monotonic() + 10
    while len(server.tree()) < 4 and time.monotonic() < deadline:
        time.sleep(0.1)
    started = server.tree()
    assert len(started) >= 4
    try:
        server.stop(timeout=5, grace=0.5, term_timeout=1)
        assert process.poll() is not None
        left = [p for p in started if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        assert left == []
    finally:
        for proc in started:
            with contextlib.suppress(psutil.Error):
                proc.kill()


def test_gc_pauses_are_read_from_the_metrics() -> None:
    text = "\n".join(
        [
            "# HELP slipway_gc_pause_seconds Pauses.",
            "# TYPE slipway_gc_pause_seconds histogram",
            'slipway_gc_pause_seconds_bucket{generation="0",le="0.1"} 40.0',
            'slipway_gc_pause_seconds_bucket{generation="0",le="+Inf"} 40.0',
            'slipway_gc_pause_seconds_count{generation="0"} 40.0',
            'slipway_gc_pause_seconds_sum{generation="0"} 0.04',
            'slipway_gc_pause_seconds_bucket{generation="2",le="0.1"} 3.0',
            'slipway_gc_pause_seconds_bucket{generation="2",le="+Inf"} 5.0',
            'slipway_gc_pause_seconds_count{generation="2"} 5.0',
            'slipway_gc_pause_seconds_sum{generation="2"} 1.2',
            "# TYPE other_total counter",
            "other_total 3.0",
        ]
    )
    assert gc_pauses(text) == {"0": (40, 0), "2": (5, 2)}
    assert gc_pauses("") == {}
