"""Soak: a real ``slipway serve`` on loopback under open-loop mixed traffic, in three phases.

Traffic mixes ``/v1/search`` (distinct queries), ``/v1/answer``, ``/v1/embed`` and streaming
``/v1/chat/completions`` (``stream: true``). Requests leave on a fixed schedule whatever the
server does (open loop: one asyncio task per request, the total fixed in advance, so the soak
stops by itself); each has a client deadline. Phases: ~70% of capacity, 3x capacity, then
70% again. Capacity is per route: its throughput under a short closed-loop calibration of that
route alone (or ``--capacity-rps``). The mix gives each route a share of the server's capacity
(a generation is worth hundreds of searches): route r is sent at ``load x share_r x
capacity_r`` requests/s, so the shares of capacity in use add up to ``load``.

Reported per route and phase: throughput, p50/p99, counts by status; the RSS of every process
of the server (the ``slipway serve`` tree: BentoML arbiter and workers) at the start and end;
the time from the end of the overload phase until the p99 over a sliding window is back
within 1.5x of the first phase's; this process's own CPU. The last line is::

    RESULT hung=... other_5xx=... recovery_s=... rss_growth_mb=... search_p99_ms=...
           answer_p99_ms=... embed_p99_ms=...

``hung``: requests with no (complete) response within the client deadline, or a connection
error; ``other_5xx``: 5xx responses other than a 503/504 carrying Retry-After (the service's
load shedding); the p99s are the first (70%) phase's. The result cache is off
(``SLIPWAY_CACHE=off``) and the key's rate limit is out of reach.

    python -m bench.soak [--quick] [--seconds 600] [--capacity-rps search=R,...] [--bundle DIR]
                         [--index-root DIR] [--index-name NAME]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import math
import random
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import psutil

from bench.serve import (
    UNLIMITED_RPM,
    Server,
    busy_processes,
    percentile_ms,
    piece_of,
    served_inputs,
    server_options,
    sse_data,
    start_server,
    stop_all,
    wait_ready,
    xquad_questions,
)
from slipway.api.keys import FileKeyStore, Scope, create_key

ROUTES = ("search", "answer", "embed", "chat")
PATHS = {
    "search": "/v1/search",
    "answer": "/v1/answer",
    "embed": "/v1/embed",
    "chat": "/v1/chat/completions",
}
DEFAULT_MIX = "search=0.4,embed=0.3,answer=0.15,chat=0.15"
PHASES = ("70% (1)", "overload", "70% (2)")
TARGETS = {
    "hung": "= 0",
    "other_5xx": "= 0",
    "recovery_s": "<= 10",
    "rss_growth_mb": "<= 50 over 10 min",
    "search_p99_ms": "<= 60 at 70%",
}
HUNG = -1  # the status of a request that got no (complete) response


# --- pure parts (unit-tested) ------------------------------------------------------------


def parse_mix(text: str) -> dict[str, float]:
    """``search=0.4,embed=0.3,...`` as normalized weights over :data:`ROUTES`."""
    weights: dict[str, float] = {}
    for item in text.split(","):
        name, _, value = item.partition("=")
        name = name.strip()
        if name not in ROUTES:
            raise ValueError(f"unknown route {name!r} in the mix; routes: {', '.join(ROUTES)}")
        weights[name] = float(value)
    total = sum(weights.values())
    if total <= 0 or any(w < 0 for w in weights.values()):
        raise ValueError("mix weights must be >= 0 and not all 0")
    return {name: w / total for name, w in weights.items() if w > 0}


def phase_lengths(total: float, split: Sequence[float] = (0.4, 0.2, 0.4)) -> list[float]:
    """The three phases' seconds for a ``total`` soak."""
    return [total * part / sum(split) for part in split]


@dataclass(frozen=True)
class Shot:
    """One scheduled request."""

    at: float  # seconds after the soak's start
    phase: int
    route: str


def parse_capacity(text: str) -> dict[str, float]:
    """``--capacity-rps``: one number (every route's capacity) or ``search=30,answer=0.5,...``
    (requests/s of each route alone)."""
    if "=" not in text:
        return dict.fromkeys(ROUTES, float(text))
    out = {}
    for item in text.split(","):
        name, _, value = item.partition("=")
        if name.strip() not in ROUTES:
            raise ValueError(f"unknown route {name.strip()!r}; routes: {', '.join(ROUTES)}")
        out[name.strip()] = float(value)
    return out


def rates(capacity: dict[str, float], mix: dict[str, float], load: float) -> dict[str, float]:
    """Requests/s per route at ``load``: each route gets its share of the capacity."""
    return {
        route: load * share * capacity.get(route, 0.0)
        for route, share in mix.items()
        if capacity.get(route, 0.0) > 0
    }


def plan(
    capacity: dict[str, float],
    lengths: Sequence[float],
    loads: Sequence[float],
    mix: dict[str, float],
    seed: int = 0,
) -> list[Shot]:
    """Each phase, each route's requests evenly spaced at its rate (a random offset per route
    and phase, so routes do not arrive in lockstep; at least one each); sorted by time."""
    rng = random.Random(seed)
    shots: list[Shot] = []
    start = 0.0
    for phase, (seconds, load) in enumerate(zip(lengths, loads, strict=True)):
        for route, rate in rates(capacity, mix, load).items():
            count = max(1, round(rate * seconds))
            spacing, offset = seconds / count, rng.random()
            shots += [Shot(start + (i + offset) * spacing, phase, route) for i in range(count)]
        start += seconds
    return sorted(shots, key=lambda s: s.at)


@dataclass
class Record:
    """What one request got."""

    route: str
    phase: int  # -1 = calibration or warm-up
    sent: float  # seconds after the soak's start (actual send time)
    status: int = HUNG  # HTTP status; HUNG when no (complete) response
    latency: float = math.inf  # seconds to the complete response
    retry_after: bool = False
    error: str = ""  # why it hung, or what was wrong with a 200
    ttft: float | None = None  # streams: seconds to the first content


def kind(record: Record) -> str:
    """``ok``, ``shed`` (503/504 with Retry-After), ``5xx``, ``4xx``, ``bad`` (a 200 with a
    wrong body) or ``hung``."""
    if record.status == HUNG:
        return "hung"
    if record.status == 200:
        return "bad" if record.error else "ok"
    if record.status in (503, 504) and record.retry_after:
        return "shed"
    return "5xx" if record.status >= 500 else "4xx"


def codes(records: Iterable[Record]) -> str:
    """Counts by status, e.g. ``200x812 503+RAx3 hung(ReadTimeout)x1``."""
    counts: Counter[str] = Counter()
    for r in records:
        if r.status == HUNG:
            counts[f"hung({r.error or '?'})"] += 1
        elif r.status == 200 and r.error:
            counts[f"200-bad({r.error})"] += 1
        else:
            counts[f"{r.status}{'+RA' if r.retry_after and r.status >= 500 else ''}"] += 1
    return " ".join(f"{k}x{n}" for k, n in sorted(counts.items())) or "-"


def normalized(records: Iterable[Record], reference: dict[str, float]) -> list[tuple[float, float]]:
    """(send time, latency / the route's reference p99) per request of a route that has a
    reference; a request that did not succeed counts as infinitely slow."""
    out = []
    for r in records:
        ref = reference.get(r.route)
        if ref and math.isfinite(ref):
            out.append((r.sent, r.latency / ref if kind(r) == "ok" else math.inf))
    return out


def window_ok(
    points: Sequence[tuple[float, float]],
    end: float,
    window: float,
    factor: float,
    min_samples: int,
) -> bool | None:
    """Whether the p99 of the requests sent in ``[end - window, end)`` is within ``factor`` of
    the reference (``None`` with fewer than ``min_samples``). Points are sorted by time."""
    values = [v for t, v in points if end - window <= t < end]
    if len(values) < min_samples:
        return None
    ratios = np.array(values)
    ratios[np.isinf(ratios)] = 1e9  # a failure: the p99 of a small window is then out
    return float(np.percentile(ratios, 99)) <= factor


def recovery_seconds(
    points: Sequence[tuple[float, float]],
    overload_end: float,
    stop: float,
    window: float = 2.0,
    factor: float = 1.5,
    hold: float = 2.0,
    step: float = 0.25,
    min_samples: int = 5,
) -> float:
    """Seconds from ``overload_end`` until the sliding-window p99 (trailing ``window``, by
    send time) is within ``factor`` of the reference and stays there for ``hold`` seconds
    (or until ``stop``); ``inf`` when it never is. Windows with too few samples are skipped;
    ``nan`` when every window has too few."""
    points = sorted(points)
    ends = np.arange(overload_end, stop + 1e-9, step)
    states = [window_ok(points, float(e), window, factor, min_samples) for e in ends]
    if all(s is None for s in states):
        return math.nan
    for i, end in enumerate(ends):
        if states[i] is not True:
            continue
        later = [s for e, s in zip(ends[i:], states[i:], strict=True) if e <= end + hold]
        if all(s is not False for s in later):
            return float(end - overload_end)
    return math.inf


def windows_within(
    points: Sequence[tuple[float, float]],
    start: float,
    stop: float,
    window: float = 2.0,
    factor: float = 1.5,
    step: float = 0.25,
    min_samples: int = 5,
) -> float:
    """The fraction of evaluable windows in ``[start + window, stop]`` within ``factor``
    (how noisy the criterion is in a steady phase)."""
    points = sorted(points)
    states = [
        window_ok(points, float(e), window, factor, min_samples)
        for e in np.arange(start + window, stop + 1e-9, step)
    ]
    judged = [s for s in states if s is not None]
    return sum(judged) / len(judged) if judged else math.nan


def result_line(figures: dict[str, float]) -> str:
    """The closing ``RESULT`` line."""

    def fmt(key: str) -> str:
        value = figures.get(key, math.nan)
        if key in ("hung", "other_5xx") and math.isfinite(value):
            return str(int(value))
        return f"{value:.1f}"

    keys = (
        "hung",
        "other_5xx",
        "recovery_s",
        "rss_growth_mb",
        "search_p99_ms",
        "answer_p99_ms",
        "embed_p99_ms",
    )
    return "RESULT " + " ".join(f"{k}={fmt(k)}" for k in keys)


# --- traffic ---------------------------------------------------------------------------


class Bodies:
    """Request bodies: each query text used once (a number is appended once the questions
    run out, so every search is distinct)."""

    def __init__(self, questions: Sequence[str], new_tokens: int) -> None:
        self._texts = self._distinct(questions)
        self.new_tokens = new_tokens

    @staticmethod
    def _distinct(questions: Sequence[str]) -> Iterator[str]:
        for n in itertools.count():
            for q in questions:
                yield q if n == 0 else f"{q} ({n})"

    def __call__(self, route: str) -> dict[str, Any]:
        text = next(self._texts)
        if route == "search":
            return {"query": text, "top_k": 10}
        if route == "answer":
            return {
                "question": text,
                "top_k": 4,
                "max_new_tokens": self.new_tokens,
                "min_relevance": -1.0,  # always generate: the load this soak is sized for
            }
        if route == "embed":
            return {"texts": [text]}
        return {
            "messages": [{"role": "user", "content": text}],
            "stream": True,
            "max_tokens": self.new_tokens,
            "temperature": 0.0,
        }


def check_body(route: str, payload: Any) -> str:
    """What is wrong with a 200's body ('' when nothing)."""
    if route == "search" and not isinstance(payload.get("results"), list):
        return "no results"
    if route == "embed" and len(payload.get("embeddings") or []) != 1:
        return "embeddings"
    if route == "answer" and not isinstance(payload.get("answer"), str):
        return "no answer"
    return ""


class Driver:
    """Sends requests and records them. aiohttp, not httpx: httpcore's pool costs time
    quadratic in the requests waiting for a connection, so with a few thousand in flight the
    load generator itself stalled (and the server saw 408s for bodies that never came)."""

    def __init__(
        self,
        server: Server,
        token: str,
        bodies: Bodies,
        deadline: float,
        connections: int,
        keepalive: float = 3.0,
    ) -> None:
        self.server, self.bodies, self.deadline = server, bodies, deadline
        self.headers = {"Authorization": f"Bearer {token}"}
        self.records: list[Record] = []
        self.errors: dict[str, str] = {}  # first message of each kind of failure
        self.t0 = time.perf_counter()
        self.wall0 = time.time()  # wall-clock time at t0 (to line records up with server logs)
        # idle connections are dropped before the server's keep-alive timeout (uvicorn's 5 s)
        # ends them: a request sent on a connection the server is closing fails for nothing
        self.client = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(
                limit=connections, limit_per_host=connections, keepalive_timeout=keepalive
            ),
            timeout=aiohttp.ClientTimeout(total=deadline + 5.0),
        )

    def now(self) -> float:
        """Seconds since the driver started."""
        return time.perf_counter() - self.t0

    async def send(self, route: str, phase: int) -> Record:
        """One request, within the deadline, recorded."""
        record = Record(route, phase, self.now())
        self.records.append(record)
        body = self.bodies(route)
        url = f"{self.server.url}{PATHS[route]}"
        start = time.perf_counter()
        try:
            async with asyncio.timeout(self.deadline):
                async with self.client.post(url, json=body, headers=self.headers) as response:
                    if route == "chat" and response.status == 200:
                        await self._stream(response, record, start)
                    else:
                        payload = await response.read()
                        self._finish(record, response, start)
                        if response.status == 200:
                            try:
                                record.error = check_body(route, json.loads(payload))
                            except (ValueError, AttributeError):
                                record.error = "not JSON"
        except TimeoutError:
            record.status, record.latency, record.error = HUNG, math.inf, "deadline"
        except (aiohttp.ClientError, json.JSONDecodeError) as exc:  # JSON: a broken event
            record.status, record.latency, record.error = HUNG, math.inf, type(exc).__name__
            self.errors.setdefault(record.error, f"{route}: {exc}")
        return record

    def _finish(self, record: Record, response: aiohttp.ClientResponse, start: float) -> None:
        record.status = response.status
        record.latency = time.perf_counter() - start
        record.retry_after = "Retry-After" in response.headers

    async def _stream(self, response: aiohttp.ClientResponse, record: Record, start: float) -> None:
        done = False
        async for raw in response.content:
            event = sse_data(raw.decode().rstrip("\r\n"))
            if event == "[DONE]":
                done = True
                break
            text, _ = piece_of(event, chat=True)
            if text and record.ttft is None:
                record.ttft = time.perf_counter() - start
        if not done:  # the stream ended without its end marker: no complete response
            record.error = "incomplete stream"
            return
        self._finish(record, response, start)

    async def warm_up(self) -> None:
        """One request of each route, one after another (the searcher and the decoder open
        lazily)."""
        for route in ROUTES:
            record = await self.send(route, -1)
            print(f"  warm-up {route}: {codes([record])} in {record.latency * 1e3:.0f} ms")

    async def closed_loop(self, route: str, clients: int, seconds: float) -> float:
        """``route`` alone, back to back from ``clients`` workers for ``seconds`` (and what is
        in flight then); successful requests/s."""
        first = len(self.records)
        start = time.perf_counter()
        stop = start + seconds

        async def worker() -> None:
            while time.perf_counter() < stop:
                await self.send(route, -1)

        await asyncio.gather(*(worker() for _ in range(clients)))
        elapsed = time.perf_counter() - start
        batch = self.records[first:]
        lat = [r.latency for r in batch if kind(r) == "ok"]
        print(
            f"  {route:>6}: {len(lat) / elapsed:7.2f} req/s ({len(batch)} requests in "
            f"{elapsed:.1f} s, {codes(batch)}), p50 {percentile_ms(lat, 50):.0f} ms "
            f"p99 {percentile_ms(lat, 99):.0f} ms"
        )
        return len(lat) / elapsed

    async def open_loop(
        self, shots: Sequence[Shot], lengths: Sequence[float], on_boundary: Any
    ) -> tuple[float, list[float]]:
        """Send every shot at its time (whether or not earlier ones answered), call
        ``on_boundary(i)`` at each phase boundary; wait for all. Returns the soak's start
        (driver time) and each phase's latest send lag."""
        lags = [0.0] * len(lengths)
        start = self.now()
        tasks: set[asyncio.Task[Record]] = set()
        done: list[asyncio.Task[Record]] = []
        boundaries = list(itertools.accumulate(lengths))
        phase_seen = 0
        await on_boundary(0)
        for shot in shots:
            while phase_seen < len(boundaries) - 1 and shot.at >= boundaries[phase_seen]:
                await asyncio.sleep(max(0.0, start + boundaries[phase_seen] - self.now()))
                phase_seen += 1
                await on_boundary(phase_seen)
            delay = start + shot.at - self.now()
            if delay > 0:
                await asyncio.sleep(delay)
            lags[shot.phase] = max(lags[shot.phase], self.now() - start - shot.at)
            task = asyncio.create_task(self.send(shot.route, shot.phase))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            done.append(task)
        await asyncio.sleep(max(0.0, start + boundaries[-1] - self.now()))
        await asyncio.gather(*done)
        await on_boundary(len(lengths))
        return start, lags


# --- reporting ---------------------------------------------------------------------------


@dataclass
class Snapshot:
    """Counters at a phase boundary."""

    at: float  # driver time
    client_cpu: float  # this process, user + system seconds
    server_cpu: float  # every process of the server
    rss: list[tuple[str, int, float]] = field(default_factory=list)


def gc_pauses(exposition: str) -> dict[str, tuple[int, int]]:
    """Per generation, the API workers' garbage collections and how many paused them for
    over 100 ms, from ``slipway_gc_pause_seconds`` in a ``/metrics`` text."""
    from prometheus_client.parser import text_string_to_metric_families

    total: dict[str, int] = defaultdict(int)
    within: dict[str, int] = defaultdict(int)
    for family in text_string_to_metric_families(exposition):
        if family.name != "slipway_gc_pause_seconds":
            continue
        for sample in family.samples:
            generation = sample.labels.get("generation", "?")
            if sample.name.endswith("_count"):
                total[generation] += int(sample.value)
            elif sample.name.endswith("_bucket") and float(sample.labels["le"]) == 0.1:
                within[generation] += int(sample.value)
    return {g: (n, n - within[g]) for g, n in sorted(total.items())}


def client_cpu() -> float:
    """User + system CPU seconds of this process so far."""
    t = psutil.Process().cpu_times()
    return t.user + t.system


def rss_lines(rss: Sequence[tuple[str, int, float]]) -> str:
    """``api 1234 210.5 MB, ...``."""
    return ", ".join(f"{label} {pid} {mb:.1f} MB" for label, pid, mb in rss)


def report_phases(
    records: Sequence[Record], lengths: Sequence[float], mix: dict[str, float]
) -> dict[tuple[str, int], list[float]]:
    """Per route and phase: offered and served rates, p50/p99/max, statuses. Returns the
    successful latencies by (route, phase)."""
    ok: dict[tuple[str, int], list[float]] = defaultdict(list)
    by: dict[tuple[str, int], list[Record]] = defaultdict(list)
    for r in records:
        if r.phase >= 0:
            by[(r.route, r.phase)].append(r)
            if kind(r) == "ok":
                ok[(r.route, r.phase)].append(r.latency)
    for phase, name in enumerate(PHASES):
        print(f"  phase {phase + 1} {name} ({lengths[phase]:.0f} s):")
        for route in mix:
            rs, lat = by[(route, phase)], ok[(route, phase)]
            ttft = [r.ttft for r in rs if r.ttft is not None and kind(r) == "ok"]
            extra = (
                f" ttft p50 {percentile_ms(ttft, 50):.0f} p99 {percentile_ms(ttft, 99):.0f} ms"
                if route == "chat"
                else ""
            )
            print(
                f"    {route:>6}: offered {len(rs) / lengths[phase]:6.2f}/s ok "
                f"{len(lat) / lengths[phase]:6.2f}/s  p50 {percentile_ms(lat, 50):7.1f} "
                f"p99 {percentile_ms(lat, 99):7.1f} max {percentile_ms(lat, 100):7.1f} ms"
                f"{extra}  {codes(rs)}"
            )
    return ok


def arguments() -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    server_options(p)
    p.add_argument(
        "--seconds",
        type=float,
        default=600.0,
        help="Length of the three phases together (split 40/20/40%%).",
    )
    p.add_argument("--quick", action="store_true", help="120 s in all (and a shorter calibration).")
    p.add_argument(
        "--phases", default=None, help="Seconds of each phase, e.g. 30,15,30 (overrides --seconds)."
    )
    p.add_argument("--load", type=float, default=0.7, help="Phases 1 and 3, x capacity.")
    p.add_argument("--overload", type=float, default=3.0, help="Phase 2, x capacity.")
    p.add_argument(
        "--capacity-rps",
        type=parse_capacity,
        default=None,
        help="Requests/s each route sustains alone: search=30,embed=40,answer=0.5,"
        "chat=1 (or one number for all); default: measure it closed-loop.",
    )
    p.add_argument(
        "--calibrate-seconds",
        type=float,
        default=None,
        help="Closed-loop calibration per route (default 10 s, 5 s with --quick).",
    )
    p.add_argument("--calibrate-clients", type=int, default=4)
    p.add_argument(
        "--mix", default=DEFAULT_MIX, help="Each route's share of the server's capacity."
    )
    p.add_argument(
        "--new-tokens",
        type=int,
        default=16,
        help="max_new_tokens of /v1/answer, max_tokens of the chat streams.",
    )
    p.add_argument(
        "--deadline",
        type=float,
        default=30.0,
        help="Client deadline per request (s); later counts as hung.",
    )
    p.add_argument("--connections", type=int, default=1024, help="Client connection pool.")
    p.add_argument(
        "--keepalive",
        type=float,
        default=3.0,
        help="Client keep-alive of idle connections (s): below the server's.",
    )
    p.add_argument("--window", type=float, default=2.0, help="Recovery: sliding window (s).")
    p.add_argument(
        "--factor",
        type=float,
        default=1.5,
        help="Recovery: window p99 within this factor of phase 1's.",
    )
    p.add_argument(
        "--hold",
        type=float,
        default=2.0,
        help="Recovery: the window p99 stays within the factor this long (s).",
    )
    p.add_argument("--rss-every", type=float, default=10.0, help="RSS sampling period (s).")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--records",
        type=Path,
        default=None,
        help="Write every request (route, phase, send time, status, latency) to this JSONL.",
    )
    args = p.parse_args()
    if args.phases:
        args.lengths = [float(x) for x in args.phases.split(",")]
        if len(args.lengths) != 3:
            p.error("--phases takes three lengths")
    else:
        args.lengths = phase_lengths(120.0 if args.quick else args.seconds)
    if args.calibrate_seconds is None:
        args.calibrate_seconds = 5.0 if args.quick else 10.0
    return args


async def soak(
    args: argparse.Namespace, server: Server, token: str, questions: list[str]
) -> dict[str, float]:
    """Calibrate (unless given), run the three phases, print the report; the figures."""
    mix = parse_mix(args.mix)
    driver = Driver(
        server,
        token,
        Bodies(questions, args.new_tokens),
        args.deadline,
        args.connections,
        args.keepalive,
    )
    async with driver.client:
        print("\nwarm-up")
        await driver.warm_up()
        if args.capacity_rps:
            capacity = {route: args.capacity_rps.get(route, 0.0) for route in mix}
            source = "given with --capacity-rps"
        else:
            print(
                f"calibration: each route alone, {args.calibrate_clients} closed-loop clients "
                f"for {args.calibrate_seconds:g} s"
            )
            cpu0, t0 = client_cpu(), time.perf_counter()
            capacity = {
                route: await driver.closed_loop(
                    route, args.calibrate_clients, args.calibrate_seconds
                )
                for route in mix
            }
            source = (
                f"measured closed-loop; load generator "
                f"{(client_cpu() - cpu0) / (time.perf_counter() - t0):.2f} cores"
            )
        print(
            f"capacity used ({source}): "
            + ", ".join(f"{route} {rps:.2f} req/s" for route, rps in capacity.items())
        )
        for route, rps in capacity.items():
            if rps <= 0:
                print(f"  {route}: no successful request, so it gets no traffic in the soak")
        if not rates(capacity, mix, 1.0):
            raise SystemExit("no route has any capacity; see the server log")
        loads = [args.load, args.overload, args.load]
        shots = plan(capacity, args.lengths, loads, mix, args.seed)
        print(
            f"\nsoak: {len(shots)} requests, open loop, deadline {args.deadline:g} s, shares of "
            f"capacity {', '.join(f'{r} {w:.0%}' for r, w in mix.items())}"
        )
        for name, load, secs in zip(PHASES, loads, args.lengths, strict=True):
            print(
                f"  {name} ({load:g}x, {secs:.0f} s): "
                + ", ".join(
                    f"{route} {rate:.2f}/s" for route, rate in rates(capacity, mix, load).items()
                )
            )

        snapshots: list[Snapshot] = []
        rss_samples: list[tuple[float, float]] = []

        async def boundary(i: int) -> None:
            server_cpu = sum((await asyncio.to_thread(server.cpu_seconds)).values())
            rss = await asyncio.to_thread(server.rss)
            snapshots.append(Snapshot(driver.now(), client_cpu(), server_cpu, rss))

        async def sample_rss(stop: asyncio.Event) -> None:
            while not stop.is_set():
                rss = await asyncio.to_thread(server.rss)
                rss_samples.append((driver.now(), sum(mb for _, _, mb in rss)))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), args.rss_every)

        stop = asyncio.Event()
        sampler = asyncio.create_task(sample_rss(stop))
        try:
            start, lags = await driver.open_loop(shots, args.lengths, boundary)
        finally:
            stop.set()
            await sampler
        alive = server.alive()
        try:
            async with driver.client.get(
                f"{server.url}/readyz", timeout=aiohttp.ClientTimeout(total=10)
            ) as response:
                readyz: int | str = response.status
            async with driver.client.get(
                f"{server.url}/metrics", timeout=aiohttp.ClientTimeout(total=10)
            ) as response:
                pauses = gc_pauses(await response.text())
        except (aiohttp.ClientError, TimeoutError) as exc:
            readyz, pauses = type(exc).__name__, {}

    records = driver.records
    soaked = [r for r in records if r.phase >= 0]
    for r in soaked:
        r.sent -= start
    if args.records:
        with args.records.open("w") as out:
            for r in records:
                wall = driver.wall0 + r.sent + (start if r.phase >= 0 else 0.0)
                out.write(json.dumps(asdict(r) | {"wall": round(wall, 3)}) + "\n")
        print(f"\nrequests written to {args.records}")
    print("\nper route and phase (latency of successful requests; +RA = with Retry-After):")
    ok = report_phases(records, args.lengths, mix)
    print(
        "  load generator: latest send behind schedule per phase "
        + ", ".join(f"{lag * 1e3:.0f} ms" for lag in lags)
    )
    print(
        "  cpu per phase (cores): "
        + " | ".join(
            f"{PHASES[i]}: server {(b.server_cpu - a.server_cpu) / (b.at - a.at):.2f}, load "
            f"generator {(b.client_cpu - a.client_cpu) / (b.at - a.at):.2f}"
            for i, (a, b) in enumerate(itertools.pairwise(snapshots))
        )
    )
    first, last = snapshots[0], snapshots[-1]
    print(
        f"  load generator (this process) over the soak: {last.client_cpu - first.client_cpu:.1f}"
        f" cpu s in {last.at - first.at:.0f} s = "
        f"{(last.client_cpu - first.client_cpu) / (last.at - first.at):.2f} cores"
    )

    rss0, rss1 = sum(mb for *_, mb in first.rss), sum(mb for *_, mb in last.rss)
    print(f"\nRSS of the server's processes at the start: {rss0:.1f} MB ({rss_lines(first.rss)})")
    print(f"RSS at the end: {rss1:.1f} MB ({rss_lines(last.rss)})")
    for i, (a, b) in enumerate(itertools.pairwise(snapshots)):
        before = {(label, pid): mb for label, pid, mb in a.rss}
        grown = [
            f"{label} {mb - before[(label, pid)]:+.1f}"
            for label, pid, mb in b.rss
            if (label, pid) in before
        ]
        print(f"  RSS change over {PHASES[i]}: {', '.join(grown)} MB")
    if {pid for _, pid, _ in first.rss} != {pid for _, pid, _ in last.rss}:
        print("  the set of processes changed during the soak (a worker died or was restarted)")
    if rss_samples:
        mbs = [mb for _, mb in rss_samples]
        print(
            f"  sampled every {args.rss_every:g} s: min {min(mbs):.1f} max {max(mbs):.1f} MB, "
            f"last {mbs[-1]:.1f} MB ({len(mbs)} samples)"
        )

    reference = {route: percentile_ms(ok[(route, 0)], 99) / 1e3 for route in mix if ok[(route, 0)]}
    points = normalized(soaked, reference)
    overload_end = args.lengths[0] + args.lengths[1]
    stop_at = sum(args.lengths)
    recovery = recovery_seconds(points, overload_end, stop_at, args.window, args.factor, args.hold)
    noise = windows_within(points, 0.0, args.lengths[0], args.window, args.factor)
    print(
        f"\nrecovery: {recovery:.2f} s from the end of the overload phase until the p99 of "
        f"the requests sent in a trailing {args.window:g} s window (each latency over its "
        f"route's phase-1 p99; a failure counts as infinitely slow) is within "
        f"{args.factor:g}x and stays so for {args.hold:g} s"
        + (" (never, before the end)" if math.isinf(recovery) else "")
        + (" (no window held enough requests)" if math.isnan(recovery) else "")
    )
    print(
        f"  in phase 1, {noise:.0%} of the windows were within {args.factor:g}x (the "
        f"criterion's noise in a steady phase)"
    )
    for route in reference:
        route_points = normalized((r for r in soaked if r.route == route), reference)
        secs = recovery_seconds(
            route_points, overload_end, stop_at, args.window, args.factor, args.hold, min_samples=3
        )
        print(
            f"  {route:>6} alone: {secs:.2f} s (windows of >= 3 requests"
            + ("; there were none" if math.isnan(secs) else "")
            + ")"
        )

    print(
        "garbage collections in the API workers (warm-up included): "
        + (
            ", ".join(
                f"generation {g}: {n} ({slow} over 100 ms)" for g, (n, slow) in pauses.items()
            )
            or "none reported"
        )
    )
    kinds = Counter(kind(r) for r in records)
    print(
        f"\nall {len(records)} requests (warm-up and calibration included): "
        + " ".join(f"{k}={n}" for k, n in sorted(kinds.items()))
        + f" | server alive: {alive}, /readyz after: {readyz}"
    )
    for name, before in (("hung", "hung"), ("other 5xx", "5xx")):
        early = sum(kind(r) == before for r in records if r.phase < 0)
        print(
            f"  {name}: {kinds[before]} ({early} in warm-up and calibration, "
            f"{kinds[before] - early} in the soak's phases)"
        )
    for error, message in driver.errors.items():
        print(f"  first {error}: {message}")
    return {
        "hung": kinds["hung"],
        "other_5xx": kinds["5xx"],
        "recovery_s": recovery,
        "rss_growth_mb": rss1 - rss0,
        **{
            f"{route}_p99_ms": percentile_ms(ok[(route, 0)], 99)
            for route in ("search", "answer", "embed")
        },
        "minutes": sum(args.lengths) / 60,
    }


def print_targets(figures: dict[str, float]) -> None:
    """Each figure next to its target."""
    checks = {
        "hung": figures["hung"] == 0,
        "other_5xx": figures["other_5xx"] == 0,
        "recovery_s": figures["recovery_s"] <= 10,
        "rss_growth_mb": figures["rss_growth_mb"] <= 50,
        "search_p99_ms": figures["search_p99_ms"] <= 60,
    }
    print("\ntargets:")
    for key, target in TARGETS.items():
        note = f" (this soak: {figures['minutes']:.1f} min)" if key == "rss_growth_mb" else ""
        value = f"{figures[key]:10.0f}" if key in ("hung", "other_5xx") else f"{figures[key]:10.1f}"
        print(
            f"  {key:>14} = {value}   target {target}{note}   {'ok' if checks[key] else 'MISSED'}"
        )


def main() -> None:
    """Start a server, soak it, stop it (and every process it started), print RESULT."""
    args = arguments()
    bundle_dir, index_root = served_inputs(args)
    questions = xquad_questions(args.seed)
    print(
        f"bundle: {bundle_dir} | index: {index_root / args.index_name} | {len(questions)} "
        f"XQuAD questions as queries"
    )
    home = Path(tempfile.mkdtemp(prefix="slipway-bench-soak-"))
    store = FileKeyStore(home / "api_keys.json")
    token, _ = create_key(store, "soak", [Scope.ADMIN], requests_per_minute=UNLIMITED_RPM)
    server = start_server(
        "soak",
        home,
        bundle_dir,
        {
            "SLIPWAY_INDEX_ROOT": str(index_root),
            "SLIPWAY_INDEX_NAME": args.index_name,
            "SLIPWAY_THREADS": str(args.threads),
            "SLIPWAY_CACHE": "off",
        },
    )
    try:
        took = wait_ready([server])
        print(f"server ready in {took:.0f} s on :{server.port} (home {home}, SLIPWAY_CACHE=off)")
        figures = asyncio.run(soak(args, server, token, questions))
        if not server.alive():
            print(f"--- the server exited; log tail ---\n{server.tail()}")
        print(f"busy processes at the end: {busy_processes()}")
    finally:
        stop_all()
        print(f"server log: {server.log}")
    print_targets(figures)
    print(result_line(figures))


if __name__ == "__main__":
    main()
