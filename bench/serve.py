"""Serving benchmark: a real ``slipway serve`` on localhost, driven over HTTP.

1. ``/v1/embed`` under 32 closed-loop clients (each sends its next request when the last one
   answers), continuously batched, with the encoder in the API worker (``SLIPWAY_ENCODER=api``,
   the default) against the encoder as a service of its own (``=service``): two servers
   started side by side and measured in interleaved rounds (api, service, in-process, then the
   reverse), and the served throughput against the same ONNX artifact embedding the same texts
   in this process (``OnnxEmbedder.embed`` on 32 texts per call: what 32 concurrent
   single-text requests can at best be merged into), with the same thread count.
2. ``/v1/search`` and ``/v1/answer`` latency at a steady, open-loop request rate.
3. Rate limiting: key A sends 10x its requests-per-minute allowance while key B keeps a modest
   rate; A's excess must get 429 with Retry-After, B's p99 must stay within 2x of B alone (B
   alone and B under A's flood alternate), and the server must stay up.
4. Generation concurrency: 8 concurrent streaming ``/v1/generate`` requests of 64 new tokens
   against one, aggregate tokens/s (``gen_concurrency_gain``), time to first token per stream.

Part 1 also reports ``served_cpu_ratio_embed``: CPU seconds of every process of the server
per embedded text, over the in-process CPU seconds per text. Every server is stopped with its
whole process tree (snapshotted first, SIGTERM to the top, then SIGTERM / SIGKILL by pid to any
descendant left), also on errors, Ctrl-C and SIGTERM, and a line says whether any remains.

Texts are XQuAD-en questions (short queries, ~15 tokens; the published index is XQuAD), sent
one per ``/v1/embed`` request unless ``--texts-per-request`` says otherwise, by an aiohttp
client (its CPU is printed: on 2 cores, what the load generator takes the server lacks). The
result cache is off (``SLIPWAY_CACHE=off``) so every request runs the model.

    python -m bench.serve [--bundle DIR] [--index-root DIR] [--index-name NAME] [--rounds N]
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import itertools
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import numpy as np
import psutil

from bench._common import (
    DATA,
    become_subreaper,
    end_processes,
    print_machine,
    process_tree,
    running,
    session_members,
)
from slipway.api.keys import FileKeyStore, Scope, create_key
from slipway.config import get_settings
from slipway.embedding import OnnxEmbedder
from slipway.onnx.bundle import OnnxBundle
from slipway.onnx.session import default_providers

ROOT = Path(__file__).resolve().parents[1]
UNLIMITED_RPM = 10_000_000
READY_TIMEOUT_S = 420.0
STOP_TIMEOUT_S = 15.0


# --- data --------------------------------------------------------------------------------


def xquad_questions(seed: int = 0) -> list[str]:
    """XQuAD-en questions from the shared data, in a fixed shuffled order."""
    path = DATA / "xquad_en" / "qa.jsonl"
    if not path.is_file():
        raise SystemExit(f"XQuAD not found at {path}; the benchmark needs ../shared/data.")
    texts = [json.loads(line)["question"].strip() for line in path.open()]
    texts = [t for t in texts if t]
    random.Random(seed).shuffle(texts)
    return texts


def batches_of(texts: Sequence[str], size: int) -> Iterator[list[str]]:
    """Endless consecutive groups of ``size`` texts, cycling through ``texts``."""
    cycle = itertools.cycle(texts)
    while True:
        yield [next(cycle) for _ in range(size)]


def percentile_ms(latencies: Sequence[float], q: float) -> float:
    """Latency percentile in milliseconds (nan without samples)."""
    return float(np.percentile(latencies, q) * 1e3) if len(latencies) else float("nan")


# --- servers -----------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port that is free on localhost right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def label_of(proc: psutil.Process) -> str:
    """What one process of a served tree is: arbiter, api, embedder, generator or other."""
    try:
        cmd = " ".join(proc.cmdline())
    except psutil.Error:
        return "other"
    if "slipway-embedder" in cmd:
        return "embedder"
    if "slipway-generator" in cmd:
        return "generator"
    if "_bentoml_impl.worker.service" in cmd:
        return "api"
    if "bentoml serve" in cmd or "-m bentoml" in cmd:
        return "arbiter"
    if "slipway.cli" in cmd:
        return "cli"
    return "other"


@dataclass
class Server:
    """One ``slipway serve`` process tree (its own session) and its log."""

    name: str
    port: int
    log: Path
    process: subprocess.Popen[bytes]
    workers: dict[str, psutil.Process] = field(default_factory=dict)
    seen: dict[int, psutil.Process] = field(default_factory=dict)  # every process of the tree
    sids: set[int] = field(default_factory=set)  # sessions of the tree
    stopped: bool = False

    @property
    def url(self) -> str:
        """Base URL."""
        return f"http://127.0.0.1:{self.port}"

    def alive(self) -> bool:
        """Whether the top process still runs."""
        return self.process.poll() is None

    def tail(self, lines: int = 40) -> str:
        """The end of the server's log."""
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError as exc:
            return f"(no log: {exc})"

    def tree(self) -> list[psutil.Process]:
        """The running processes of the server now: the top and its descendants, and anything
        re-parented out of it that is still in its session; remembered for :meth:`stop`."""
        procs = {p.pid: p for p in process_tree(self.process.pid)}
        for proc in session_members(self.sessions(procs.values())):
            procs.setdefault(proc.pid, proc)
        for pid, proc in procs.items():
            known = self.seen.get(pid)
            if known is None or not running([known]):
                self.seen[pid] = proc
        return running(self.seen[pid] for pid in procs)

    def sessions(self, procs: Iterable[psutil.Process] = ()) -> set[int]:
        """The server's own session and those that processes of its tree lead (remembered:
        a session outlives its leader)."""
        self.sids.add(self.process.pid)
        for proc in procs:
            try:
                if os.getsid(proc.pid) == proc.pid and proc.is_running():
                    self.sids.add(proc.pid)
            except (OSError, psutil.Error):
                continue
        return set(self.sids)

    def find_workers(self) -> None:
        """Label the process tree: arbiter, api, embedder, generator."""
        for proc in self.tree():
            label = label_of(proc)
            if label not in ("cli", "other"):
                self.workers[label] = proc

    def cpu_seconds(self) -> dict[str, float]:
        """User + system CPU seconds so far of the server's processes, summed per label (every
        process of the tree: unlabelled ones as ``cli`` / ``other``). A process that ended
        takes its seconds with it."""
        out: dict[str, float] = {}
        for proc in self.tree():
            label = label_of(proc)
            try:
                t = proc.cpu_times()
            except psutil.Error:
                continue
            out[label] = out.get(label, 0.0) + t.user + t.system
        return out

    def rss(self) -> list[tuple[str, int, float]]:
        """(label, pid, resident MB) of every process of the server."""
        out = []
        for proc in self.tree():
            try:
                out.append((label_of(proc), proc.pid, proc.memory_info().rss / 2**20))
            except psutil.Error:
                continue
        return sorted(out)

    def stop(
        self, timeout: float = STOP_TIMEOUT_S, grace: float = 3.0, term_timeout: float = 5.0
    ) -> None:
        """End every process the server started: snapshot the tree, SIGTERM the top (the way
        an orchestrator stops ``slipway serve``), wait, then SIGTERM / SIGKILL by pid whatever
        of the snapshot outlived it. Prints whether anything is left."""
        if self.stopped:
            return
        self.stopped = True
        procs = self.tree()  # before any signal: children are re-parented once the top dies
        top_pid = self.process.pid
        start = time.monotonic()
        how = "the top had already exited"
        if self.alive():
            try:
                self.process.send_signal(signal.SIGTERM)
                self.process.wait(timeout)
                how = f"the top exited {time.monotonic() - start:.1f} s after SIGTERM"
            except subprocess.TimeoutExpired:
                how = f"the top ignored SIGTERM for {timeout:g} s"
        rest = end_processes(
            [p for p in procs if p.pid != top_pid]
            + [p for p in self.seen.values() if p.pid != top_pid and p not in procs],
            grace,
            term_timeout,
        )
        if self.alive():  # the top too, if it ignored SIGTERM
            self.process.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(5)
        left = running(self.seen.values()) + [
            p for p in running(session_members(self.sessions())) if p.pid not in self.seen
        ]
        state = (
            "no process of its tree remains"
            if not left
            else "STILL RUNNING: " + ", ".join(f"{p.pid} {label_of(p)}" for p in left)
        )
        print(
            f"server {self.name} stopped ({len(self.seen)} processes seen; {how}; "
            f"descendants: {rest}): {state}",
            flush=True,
        )


_STARTED: list[Server] = []


def stop_all() -> None:
    """Stop every server this process started (atexit, and the benchmarks' ``finally``), then
    anything still descending from this process: as the subreaper of its own tree (see
    :func:`guard_processes`) it adopts what a server's processes left orphaned, and servers are
    all it starts."""
    if not _STARTED:
        return
    for server in _STARTED:
        try:
            server.stop()
        except Exception as exc:
            print(f"stopping server {server.name}: {exc!r}", file=sys.stderr)
    _STARTED.clear()
    left = running(process_tree(os.getpid())[1:])
    if left:
        how = end_processes(left, grace=0.0)
        print(
            f"{len(left)} more processes descended from this benchmark ("
            + ", ".join(f"{p.pid} {label_of(p)}" for p in left)
            + f"): {how}",
            flush=True,
        )
    else:
        print("no process started by this benchmark remains", flush=True)


def _exit_on_signal(signum: int, _frame: Any) -> None:
    # The servers first: unwinding the benchmark (cancelling thousands of requests in flight)
    # may take long, and must not be what keeps them alive.
    print(f"\n{signal.Signals(signum).name}: stopping the servers", file=sys.stderr, flush=True)
    stop_all()
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise SystemExit(128 + signum)


def guard_processes() -> None:
    """Whatever ends this benchmark (an error, Ctrl-C, SIGTERM, SIGHUP), its servers end too:
    a signal stops them at once, then becomes ``SystemExit`` / ``KeyboardInterrupt`` (so
    ``finally`` blocks run); :func:`stop_all` runs at exit too; and this process adopts
    orphaned descendants (so a worker whose parent died is still found and reaped)."""
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(sig, _exit_on_signal)
    atexit.register(stop_all)
    become_subreaper()


def start_server(name: str, home: Path, bundle: Path, env_extra: dict[str, str]) -> Server:
    """Start ``python -m slipway.cli serve`` on a free port in its own session."""
    port = free_port()
    env = dict(os.environ)
    env.update(
        {
            "SLIPWAY_HOME": str(home),
            "SLIPWAY_API_KEYS_FILE": str(home / "api_keys.json"),
            "SLIPWAY_CACHE": "off",
            "HF_HUB_OFFLINE": "1",
            "BENTOML_DO_NOT_TRACK": "true",
            "BENTOML_HOME": str(home / f"bentoml-{name}"),
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(env_extra)
    log = home / f"server-{name}.log"
    cmd = [
        sys.executable,
        "-m",
        "slipway.cli",
        "serve",
        "--port",
        str(port),
        "--bundle-dir",
        str(bundle),
    ]
    with log.open("wb") as handle:
        process = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
        )
    server = Server(name, port, log, process)
    _STARTED.append(server)
    return server


def wait_ready(servers: Sequence[Server], timeout: float = READY_TIMEOUT_S) -> float:
    """Poll ``/readyz`` of every server until all answer 200; seconds it took."""
    start = time.monotonic()
    pending = list(servers)
    with httpx.Client(timeout=5.0) as client:
        while pending:
            for server in list(pending):
                if not server.alive():
                    raise RuntimeError(
                        f"server {server.name} exited with "
                        f"{server.process.returncode}:\n{server.tail()}"
                    )
                try:
                    if client.get(f"{server.url}/readyz").status_code == 200:
                        pending.remove(server)
                        server.find_workers()
                except httpx.HTTPError:
                    pass
            if time.monotonic() - start > timeout:
                tails = "\n".join(f"--- {s.name} ---\n{s.tail()}" for s in pending)
                raise RuntimeError(f"not ready after {timeout:.0f} s:\n{tails}")
            if pending:
                time.sleep(1.0)
    return time.monotonic() - start


# --- load generators ---------------------------------------------------------------------


@dataclass
class Load:
    """What one measured phase saw."""

    name: str
    latencies: list[float] = field(default_factory=list)  # successful requests, seconds
    statuses: Counter[int] = field(default_factory=Counter)  # 0 = transport error
    texts: int = 0  # texts in successful responses
    elapsed: float = 0.0
    client_cpu: float = 0.0
    server_cpu: dict[str, float] = field(default_factory=dict)
    send_lag: float = 0.0  # open loop: latest a request left after its scheduled time
    missing_retry_after: int = 0
    prompt_tokens: int = 0  # summed usage of successful responses that report it
    completion_tokens: int = 0
    encoder_calls: float = 0.0  # from the server's slipway_embed_batch_size histogram
    encoder_texts: float = 0.0

    @property
    def throughput(self) -> float:
        """Embedded texts per second."""
        return self.texts / self.elapsed if self.elapsed else 0.0

    @property
    def requests(self) -> int:
        """Requests sent."""
        return sum(self.statuses.values())

    @property
    def errors(self) -> int:
        """Requests that did not answer 200."""
        return self.requests - self.statuses.get(200, 0)

    def p(self, q: float) -> float:
        """Latency percentile of successful requests (ms)."""
        return percentile_ms(self.latencies, q)

    def codes(self) -> str:
        """Status counts, e.g. ``200x812 503x3``."""
        return " ".join(f"{code}x{n}" for code, n in sorted(self.statuses.items()))


def pooled(name: str, loads: Sequence[Load]) -> Load:
    """Several rounds as one phase."""
    out = Load(name)
    for load in loads:
        out.latencies += load.latencies
        out.statuses.update(load.statuses)
        out.texts += load.texts
        out.elapsed += load.elapsed
        out.client_cpu += load.client_cpu
        for label, cpu in load.server_cpu.items():
            out.server_cpu[label] = out.server_cpu.get(label, 0.0) + cpu
        out.send_lag = max(out.send_lag, load.send_lag)
        out.missing_retry_after += load.missing_retry_after
        out.prompt_tokens += load.prompt_tokens
        out.completion_tokens += load.completion_tokens
        out.encoder_calls += load.encoder_calls
        out.encoder_texts += load.encoder_texts
    return out


def new_client(connections: int) -> httpx.AsyncClient:
    """A keep-alive HTTP/1.1 client with room for ``connections`` parallel connections."""
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    return httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(120.0))


async def post(
    client: httpx.AsyncClient,
    url: str,
    token: str,
    body: dict[str, Any],
    load: Load,
    expect_texts: int = 0,
    usage: bool = False,
) -> None:
    """Send one request and record its status and latency (and ``usage``) into ``load``."""
    start = time.perf_counter()
    try:
        response = await client.post(url, json=body, headers={"Authorization": f"Bearer {token}"})
    except httpx.HTTPError:
        load.statuses[0] += 1
        return
    seconds = time.perf_counter() - start
    status = response.status_code
    if status == 200 and expect_texts:
        vectors = response.json()["embeddings"]
        if len(vectors) != expect_texts:
            status = -1  # a wrong answer counts as an error
    if status == 200 and usage:
        counts = response.json().get("usage", {})
        load.prompt_tokens += counts.get("prompt_tokens", 0)
        load.completion_tokens += counts.get("completion_tokens", 0)
    load.statuses[status] += 1
    if status == 200:
        load.latencies.append(seconds)
        load.texts += expect_texts
    elif status == 429 and "retry-after" not in response.headers:
        load.missing_retry_after += 1


async def encoder_batches(client: httpx.AsyncClient, server: Server) -> tuple[float, float]:
    """Encoder calls and texts so far, from the server's ``/metrics`` (nan when absent)."""
    try:
        text = (await client.get(f"{server.url}/metrics")).text
    except httpx.HTTPError:
        return float("nan"), float("nan")
    calls = texts = 0.0
    found = False
    for line in text.splitlines():
        name, _, value = line.rpartition(" ")
        if name.startswith("slipway_embed_batch_size_count"):
            calls, found = calls + float(value), True
        elif name.startswith("slipway_embed_batch_size_sum"):
            texts += float(value)
    return (calls, texts) if found else (float("nan"), float("nan"))


async def closed_loop(
    client: httpx.AsyncClient,
    server: Server,
    token: str,
    batches: Iterator[list[str]],
    clients: int,
    seconds: float,
    name: str,
) -> Load:
    """``clients`` workers posting ``/v1/embed`` back to back for ``seconds``."""
    load = Load(name)
    url = f"{server.url}/v1/embed"
    calls0, texts0 = await encoder_batches(client, server)
    cpu0, srv0 = time.process_time(), server.cpu_seconds()
    start = time.perf_counter()
    deadline = start + seconds

    # aiohttp, not httpx, sends this load: a quarter of the client CPU per request, which on a
    # 2-core machine is CPU the server under test keeps
    headers = {"Authorization": f"Bearer {token}"}
    connector = aiohttp.TCPConnector(limit=clients + 8)
    timeout = aiohttp.ClientTimeout(total=120)

    async def worker(session: aiohttp.ClientSession) -> None:
        while time.perf_counter() < deadline:
            texts = next(batches)
            t0 = time.perf_counter()
            try:
                async with session.post(url, json={"texts": texts}, headers=headers) as response:
                    status = response.status
                    body = await response.read()
            except aiohttp.ClientError:
                load.statuses[0] += 1
                continue
            if status == 200 and len(json.loads(body)["embeddings"]) != len(texts):
                status = -1  # a wrong answer counts as an error
            load.statuses[status] += 1
            if status == 200:
                load.latencies.append(time.perf_counter() - t0)
                load.texts += len(texts)

    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await asyncio.gather(*(worker(session) for _ in range(clients)))
    load.elapsed = time.perf_counter() - start
    load.client_cpu = time.process_time() - cpu0
    srv1 = server.cpu_seconds()
    load.server_cpu = {k: srv1[k] - srv0.get(k, 0.0) for k in srv1}
    calls1, texts1 = await encoder_batches(client, server)
    load.encoder_calls, load.encoder_texts = calls1 - calls0, texts1 - texts0
    return load


@dataclass(frozen=True)
class Shot:
    """One scheduled request of an open-loop run."""

    at: float  # seconds after the start
    path: str
    body: dict[str, Any]
    token: str
    load: Load
    texts: int = 0
    usage: bool = False


def schedule(
    path: str,
    bodies: Iterator[dict[str, Any]],
    token: str,
    rate: float,
    seconds: float,
    load: Load,
    offset: float = 0.0,
    texts: int = 0,
    usage: bool = False,
) -> list[Shot]:
    """Requests at a fixed rate for ``seconds``, starting ``offset`` seconds in."""
    count = max(1, round(rate * seconds))
    return [
        Shot(offset + i / rate, path, next(bodies), token, load, texts, usage) for i in range(count)
    ]


async def open_loop(client: httpx.AsyncClient, server: Server, shots: Sequence[Shot]) -> None:
    """Send every shot at its time, whether or not earlier ones have answered."""
    tasks = []
    start = time.perf_counter()
    cpu0, srv0 = time.process_time(), server.cpu_seconds()
    for shot in sorted(shots, key=lambda s: s.at):
        delay = start + shot.at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        shot.load.send_lag = max(shot.load.send_lag, time.perf_counter() - start - shot.at)
        tasks.append(
            asyncio.create_task(
                post(
                    client,
                    f"{server.url}{shot.path}",
                    shot.token,
                    shot.body,
                    shot.load,
                    shot.texts,
                    shot.usage,
                )
            )
        )
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - start
    cpu, srv1 = time.process_time() - cpu0, server.cpu_seconds()
    for load in {id(s.load): s.load for s in shots}.values():
        load.elapsed, load.client_cpu = elapsed, cpu
        load.server_cpu = {k: srv1[k] - srv0.get(k, 0.0) for k in srv1}


# --- the three parts ---------------------------------------------------------------------


@dataclass
class EmbedResult:
    """Part 1's pooled phases."""

    api: Load  # the encoder in the API worker (the default)
    service: Load  # the encoder as a service of its own
    local: Load
    single: Load  # in-process, one text per call: the encoder's own batching gain


def inprocess_round(model: OnnxEmbedder, batches: Iterator[list[str]], seconds: float) -> Load:
    """The ONNX artifact in this process on ``batches`` back to back for ``seconds``."""
    load = Load("in-process")
    cpu0 = time.process_time()
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        texts = next(batches)
        t0 = time.perf_counter()
        vectors = model.embed(texts)
        load.latencies.append(time.perf_counter() - t0)
        load.statuses[200 if len(vectors) == len(texts) else -1] += 1
        load.texts += len(texts)
    load.elapsed = time.perf_counter() - start
    load.client_cpu = time.process_time() - cpu0
    return load


def cpu_line(load: Load) -> str:
    """Server CPU milliseconds per request, per process, and the client's CPU share."""
    n = max(load.requests, 1)
    parts = " ".join(
        f"{k}={v / n * 1e3:.2f}" for k, v in sorted(load.server_cpu.items()) if k != "generator"
    )
    total = sum(v for k, v in load.server_cpu.items() if k != "generator")
    batch = load.encoder_texts / load.encoder_calls if load.encoder_calls else float("nan")
    return (
        f"server cpu ms/request: {parts} (total {total / n * 1e3:.2f}; "
        f"{total / max(load.elapsed, 1e-9):.2f} cores) | client cpu "
        f"{load.client_cpu / max(load.elapsed, 1e-9):.2f} cores | texts per encoder call "
        f"{batch:.1f}"
    )


async def part_embed(
    api: Server,
    service: Server,
    model: OnnxEmbedder,
    token: str,
    texts: list[str],
    per_request: int,
    local_batch: int,
    clients: int,
    rounds: int,
    seconds: float,
    warmup: float,
) -> EmbedResult:
    """Encoder in the API worker vs a service of its own vs in-process, interleaved rounds."""
    served_batches = batches_of(texts, per_request)
    local_batches = batches_of(texts, local_batch)
    single_batches = batches_of(texts, 1)
    phases: dict[str, list[Load]] = {"api": [], "service": [], "local": [], "single": []}
    async with new_client(clients + 8) as client_api, new_client(clients + 8) as client_svc:
        clients_of = {"api": (client_api, api), "service": (client_svc, service)}
        for name, (client, server) in clients_of.items():  # warm-up (and BentoML's optimizer)
            w = await closed_loop(client, server, token, served_batches, clients, warmup, name)
            print(f"  warm-up {name}: {w.throughput:.0f} texts/s, {w.codes()}")
        inprocess_round(model, local_batches, min(warmup, 2.0))
        order = ["api", "service", "local", "single"]
        for r in range(rounds):
            for name in order if r % 2 == 0 else order[::-1]:
                if name in ("local", "single"):
                    batches = local_batches if name == "local" else single_batches
                    load = inprocess_round(model, batches, seconds)
                else:
                    client, server = clients_of[name]
                    load = await closed_loop(
                        client, server, token, served_batches, clients, seconds, name
                    )
                phases[name].append(load)
                print(
                    f"  round {r + 1} {name:>7}: {load.throughput:7.1f} texts/s  "
                    f"p50 {load.p(50):6.1f} ms  p99 {load.p(99):6.1f} ms  {load.codes()}"
                )
    return EmbedResult(
        pooled("encoder in api", phases["api"]),
        pooled("encoder service", phases["service"]),
        pooled("in-process", phases["local"]),
        pooled("in-process 1", phases["single"]),
    )


async def part_steady(
    server: Server,
    token: str,
    questions: list[str],
    search_rate: float,
    answer_rate: float,
    seconds: float,
    answer_seconds: float,
    new_tokens: int,
) -> tuple[Load, Load]:
    """Open-loop ``/v1/search`` then ``/v1/answer`` at fixed rates."""
    search, answer = Load("search"), Load("answer")
    q = itertools.cycle(questions)
    async with new_client(64) as client:
        warm = Load("warm-up")  # one of each first: the searcher and the decoder open lazily
        await open_loop(
            client,
            server,
            [
                Shot(0.0, "/v1/search", {"query": next(q), "top_k": 10}, token, warm),
                Shot(
                    0.0,
                    "/v1/answer",
                    {
                        "question": next(q),
                        "top_k": 4,
                        "max_new_tokens": new_tokens,
                        "min_relevance": -1.0,
                    },
                    token,
                    warm,
                ),
            ],
        )
        if warm.errors:
            print(f"  warm-up errors: {warm.codes()}")
        await open_loop(
            client,
            server,
            schedule(
                "/v1/search",
                ({"query": next(q), "top_k": 10} for _ in itertools.count()),
                token,
                search_rate,
                seconds,
                search,
            ),
        )
        await open_loop(
            client,
            server,
            schedule(
                "/v1/answer",
                (
                    {
                        "question": next(q),
                        "top_k": 4,
                        "max_new_tokens": new_tokens,
                        "min_relevance": -1.0,
                    }
                    for _ in itertools.count()
                ),
                token,
                answer_rate,
                answer_seconds,
                answer,
                usage=True,
            ),
        )
    return search, answer


@dataclass
class LimitRound:
    """One alternation of part 3."""

    alone: Load
    loaded: Load
    flood: Load  # key A over the whole flood
    flood_window: Load  # key A while B was measured (the limiter's steady state)


async def part_limits(
    server: Server,
    token_a: str,
    token_b: str,
    texts: list[str],
    rpm_a: int,
    overload: float,
    rate_b: float,
    seconds: float,
    rounds: int,
) -> list[LimitRound]:
    """B alone vs B beside A at ``overload`` x its allowance, alternating."""
    rate_a = overload * rpm_a / 60.0
    # A's bucket starts full (one minute's allowance): B is measured once it has drained.
    drain = rpm_a / (rate_a - rpm_a / 60.0) + 1.0
    bodies = ({"texts": [t]} for t in itertools.cycle(texts))
    out: list[LimitRound] = []
    async with new_client(256) as client:
        warm = Load("warm-up")
        await open_loop(
            client, server, schedule("/v1/embed", bodies, token_b, rate_b, 3.0, warm, texts=1)
        )
        for r in range(rounds):
            alone, loaded = Load("B alone"), Load("B loaded")
            flood, window = Load("A flood"), Load("A window")
            for phase in ("alone", "loaded") if r % 2 == 0 else ("loaded", "alone"):
                if phase == "alone":
                    await open_loop(
                        client,
                        server,
                        schedule("/v1/embed", bodies, token_b, rate_b, seconds, alone, texts=1),
                    )
                    continue
                shots = schedule(
                    "/v1/embed", bodies, token_b, rate_b, seconds, loaded, offset=drain, texts=1
                )
                for shot in schedule(
                    "/v1/embed", bodies, token_a, rate_a, drain + seconds, flood, texts=1
                ):
                    in_window = drain <= shot.at < drain + seconds
                    shots.append(
                        Shot(
                            shot.at,
                            shot.path,
                            shot.body,
                            shot.token,
                            window if in_window else flood,
                            shot.texts,
                        )
                    )
                await open_loop(client, server, shots)
            flood_all = pooled("A flood", [flood, window])
            flood_all.elapsed, window.elapsed = drain + seconds, seconds
            out.append(LimitRound(alone, loaded, flood_all, window))
            ratio = loaded.p(99) / alone.p(99)
            print(
                f"  round {r + 1}: B alone p50 {alone.p(50):.1f} p99 {alone.p(99):.1f} ms "
                f"({alone.codes()}) | B loaded p50 {loaded.p(50):.1f} p99 {loaded.p(99):.1f} "
                f"ms ({loaded.codes()}) | ratio {ratio:.2f} | A: {flood_all.codes()}, "
                f"in B's window {window.statuses.get(200, 0) / seconds:.2f} req/s admitted "
                f"(limit {rpm_a / 60:.2f})"
            )
    return out


@dataclass
class StreamRun:
    """One run of ``streams`` concurrent streaming generations."""

    streams: int
    ttft: list[float] = field(default_factory=list)  # seconds to the first text piece
    totals: list[float] = field(default_factory=list)  # seconds to the end of the stream
    statuses: Counter[int] = field(default_factory=Counter)  # 0 = transport error
    tokens: int = 0  # completion tokens of the streams that finished
    elapsed: float = 0.0  # first send to last end

    @property
    def tokens_per_s(self) -> float:
        """Aggregate completion tokens per second."""
        return self.tokens / self.elapsed if self.elapsed else 0.0


def sse_data(line: str) -> Any:
    """The payload of one server-sent-events ``data:`` line (``None`` for other lines,
    ``"[DONE]"`` for the end marker)."""
    if not line.startswith("data:"):
        return None
    data = line[5:].strip()
    return data if data == "[DONE]" else json.loads(data)


def piece_of(event: Any, chat: bool) -> tuple[str, int | None]:
    """(text, completion tokens or None) of one streamed event of ``/v1/generate`` or chat."""
    if not isinstance(event, dict):
        return "", None
    usage = event.get("usage") or {}
    tokens = usage.get("completion_tokens")
    if chat:
        choices = event.get("choices") or [{}]
        return (choices[0].get("delta") or {}).get("content") or "", tokens
    return event.get("text") or "", tokens


async def stream_one(
    client: httpx.AsyncClient,
    url: str,
    token: str,
    body: dict[str, Any],
    chat: bool,
    run: StreamRun,
) -> None:
    """One streaming generation, recorded into ``run``."""
    start = time.perf_counter()
    first = None
    tokens = None
    try:
        async with client.stream(
            "POST", url, json=body, headers={"Authorization": f"Bearer {token}"}
        ) as response:
            status = response.status_code
            if status == 200:
                done = False
                async for line in response.aiter_lines():
                    event = sse_data(line)
                    if event == "[DONE]":
                        done = True
                        break
                    text, count = piece_of(event, chat)
                    if text and first is None:
                        first = time.perf_counter() - start
                    tokens = count if count is not None else tokens
                if not done or tokens is None:
                    status = -1  # a stream that ended early counts as an error
            else:
                await response.aread()
    except httpx.HTTPError:
        status = 0
    run.statuses[status] += 1
    if status == 200:
        run.totals.append(time.perf_counter() - start)
        run.ttft.append(first if first is not None else run.totals[-1])
        run.tokens += tokens or 0


async def part_generation(
    server: Server,
    token: str,
    questions: list[str],
    streams: int,
    new_tokens: int,
    rounds: int,
    chat: bool,
) -> tuple[StreamRun, StreamRun]:
    """1 stream vs ``streams`` concurrent streams of ``new_tokens`` each, interleaved rounds."""
    path = "/v1/chat/completions" if chat else "/v1/generate"
    prompts = (
        f"Write a long, detailed essay on this question: {q}" for q in itertools.cycle(questions)
    )

    def body() -> dict[str, Any]:
        prompt = next(prompts)
        if chat:
            return {
                "messages": [{"role": "user", "content": prompt}],
                "stream": True,
                "max_tokens": new_tokens,
                "temperature": 0.0,
            }
        return {"prompt": prompt, "stream": True, "max_new_tokens": new_tokens, "temperature": 0.0}

    one, many = StreamRun(1), StreamRun(streams)
    async with new_client(streams + 4) as client:
        warm = StreamRun(1)
        await stream_one(client, f"{server.url}{path}", token, body(), chat, warm)
        if warm.statuses.get(200) != 1:
            print(f"  warm-up: {dict(warm.statuses)}")
        for r in range(rounds):
            for run in (one, many) if r % 2 == 0 else (many, one):
                part = StreamRun(run.streams)
                start = time.perf_counter()
                await asyncio.gather(
                    *(
                        stream_one(client, f"{server.url}{path}", token, body(), chat, part)
                        for _ in range(run.streams)
                    )
                )
                part.elapsed = time.perf_counter() - start
                print(
                    f"  round {r + 1} {run.streams} stream(s): {part.tokens_per_s:6.1f} "
                    f"tokens/s ({part.tokens} tokens in {part.elapsed:.2f} s), time to first "
                    f"token p50 {percentile_ms(part.ttft, 50):.0f} ms, "
                    f"{dict(sorted(part.statuses.items()))}"
                )
                run.ttft += part.ttft
                run.totals += part.totals
                run.statuses.update(part.statuses)
                run.tokens += part.tokens
                run.elapsed += part.elapsed
    return one, many


# --- main --------------------------------------------------------------------------------


def newest_bundle() -> Path | None:
    """The most recently built bundle under ``$SLIPWAY_HOME/cache/bundles``."""
    root = get_settings().cache_dir / "bundles"
    found = [p for p in root.glob("*") if (p / "manifest.json").is_file()] if root.is_dir() else []
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def server_options(p: argparse.ArgumentParser) -> None:
    """The options that say what a benchmark's servers serve: bundle, index and threads."""
    p.add_argument(
        "--bundle",
        type=Path,
        default=None,
        help="Bundle to serve (default: newest under $SLIPWAY_HOME/cache/bundles).",
    )
    p.add_argument(
        "--index-root",
        type=Path,
        default=None,
        help="SLIPWAY_INDEX_ROOT of the servers (default: $SLIPWAY_HOME/indexes).",
    )
    p.add_argument("--index-name", default="default")
    p.add_argument(
        "--threads",
        type=int,
        default=len(os.sched_getaffinity(0)),
        help="ONNX threads, in the servers (SLIPWAY_THREADS) and in-process.",
    )


def served_inputs(args: argparse.Namespace) -> tuple[Path, Path]:
    """The bundle and index root a benchmark's servers serve (from :func:`server_options`),
    checked, after the process guards are set and the machine is printed."""
    guard_processes()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
    bundle_dir = args.bundle or newest_bundle()
    if bundle_dir is None:
        raise SystemExit("No bundle: pass --bundle DIR (or build one with the pipeline).")
    bundle_dir = bundle_dir.resolve()
    index_root = (args.index_root or get_settings().home / "indexes").resolve()
    if not (index_root / args.index_name).is_dir():
        raise SystemExit(f"No index {args.index_name!r} under {index_root}.")
    print_machine(args.threads)
    print(f"busy processes before start: {busy_processes()}")
    return bundle_dir, index_root


def arguments() -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    server_options(p)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--parts", default="1,2,3,4", help="Which parts to run, e.g. 1 or 2,3.")
    p.add_argument("--seconds", type=float, default=8.0, help="Length of one part-1 phase.")
    p.add_argument("--warmup", type=float, default=4.0)
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--texts-per-request", type=int, default=1)
    p.add_argument(
        "--local-batch",
        type=int,
        default=32,
        help="Texts per OnnxEmbedder.embed call of the in-process baseline.",
    )
    p.add_argument(
        "--max-batch-tokens",
        type=int,
        default=None,
        help="SLIPWAY_EMBED_MAX_BATCH_TOKENS of both servers (default: the service's).",
    )
    p.add_argument("--search-rate", type=float, default=2.0)
    p.add_argument("--answer-rate", type=float, default=0.2)
    p.add_argument("--steady-seconds", type=float, default=20.0)
    p.add_argument("--answer-seconds", type=float, default=60.0)
    p.add_argument("--answer-tokens", type=int, default=32)
    p.add_argument("--limit-rpm", type=int, default=120, help="Key A's requests per minute.")
    p.add_argument("--overload", type=float, default=10.0)
    p.add_argument("--other-rate", type=float, default=10.0, help="Key B's requests per second.")
    p.add_argument(
        "--limit-seconds",
        type=float,
        default=30.0,
        help="Length of each B phase (300 samples at 10/s: a p99 that is not the max).",
    )
    p.add_argument("--limit-rounds", type=int, default=None, help="Default: --rounds.")
    p.add_argument("--gen-streams", type=int, default=8, help="Part 4: concurrent streams.")
    p.add_argument("--gen-tokens", type=int, default=64, help="Part 4: new tokens per stream.")
    p.add_argument("--gen-rounds", type=int, default=None, help="Part 4 rounds; default --rounds.")
    p.add_argument(
        "--gen-route",
        choices=("generate", "chat"),
        default="generate",
        help="Part 4: /v1/generate or /v1/chat/completions, both with stream: true.",
    )
    args = p.parse_args()
    args.gen_rounds = args.gen_rounds or args.rounds
    return args


def busy_processes() -> str:
    """Other processes using CPU right now (the machine is shared)."""
    procs = list(psutil.process_iter(["pid", "name", "cmdline"]))
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.cpu_percent(None)
    time.sleep(1.0)
    busy = []
    for proc in procs:
        try:
            cpu = proc.cpu_percent(None)
        except psutil.Error:
            continue
        if cpu >= 20 and proc.pid != os.getpid():
            busy.append(f"{proc.pid} {cpu:.0f}% {' '.join(proc.info['cmdline'] or [])[:80]}")
    return "; ".join(busy) or "none"


def report_embed(
    args: argparse.Namespace,
    api: Server,
    service: Server,
    model: OnnxEmbedder,
    token: str,
    texts: list[str],
) -> dict[str, float]:
    """Part 1, printed; its RESULT fields."""
    print(
        f"\n[1] /v1/embed, {args.clients} closed-loop clients, {args.texts_per_request} "
        f"text(s) per request, {args.seconds:g} s phases, {args.rounds} rounds; "
        f"in-process: OnnxEmbedder.embed on {args.local_batch} texts per call"
    )
    embed = asyncio.run(
        part_embed(
            api,
            service,
            model,
            token,
            texts,
            args.texts_per_request,
            args.local_batch,
            args.clients,
            args.rounds,
            args.seconds,
            args.warmup,
        )
    )
    for load in (embed.api, embed.service, embed.local, embed.single):
        print(
            f"  {load.name:>15}: {load.throughput:7.1f} texts/s  p50 {load.p(50):6.1f} ms"
            f"  p99 {load.p(99):6.1f} ms  requests {load.requests} errors {load.errors}"
            f" ({load.codes()})"
        )
    for load in (embed.api, embed.service):
        print(f"  {load.name:>15}: {cpu_line(load)}")
    nan = float("nan")
    gain = embed.api.throughput / embed.service.throughput if embed.service.throughput else nan
    fraction = embed.api.throughput / embed.local.throughput if embed.local.throughput else nan
    error_rate = embed.api.errors / max(embed.api.requests, 1)
    ceiling = embed.local.throughput / embed.single.throughput if embed.single.throughput else nan
    print(
        f"  the encoder's own batching gain in this process ({args.local_batch} texts per call "
        f"vs 1): {ceiling:.2f}x, the most any batching can give on this machine"
    )
    local_per_text = embed.local.client_cpu / embed.local.texts if embed.local.texts else nan
    ratios = {}
    for load in (embed.api, embed.service):
        served = sum(load.server_cpu.values())  # every process of the server
        per_text = served / load.texts if load.texts else nan
        ratios[load.name] = per_text / local_per_text if local_per_text else nan
        print(
            f"  cpu per text, {load.name}: served {per_text * 1e3:.2f} ms (all "
            f"{len(load.server_cpu)} kinds of server process: "
            + " ".join(
                f"{k}={v / max(load.texts, 1) * 1e3:.2f}"
                for k, v in sorted(load.server_cpu.items())
            )
            + f") | in-process {local_per_text * 1e3:.2f} ms | ratio {ratios[load.name]:.2f} | "
            f"load generator (this process) {load.client_cpu / max(load.texts, 1) * 1e3:.2f} ms"
            f" per text, {load.client_cpu / max(load.elapsed, 1e-9):.2f} cores"
        )
    print(
        f"  encoder in api / encoder service throughput {gain:.2f}x | served (api) / in-process"
        f" {fraction:.2f} (target >= 0.6) | cpu ratio (api) {ratios[embed.api.name]:.2f} "
        f"(target <= 1.5) | error rate {error_rate:.1%} (throughput and latency count "
        "successful requests only)"
    )
    return {
        "placement_gain": gain,
        "served_fraction": fraction,
        "served_cpu_ratio_embed": ratios[embed.api.name],
        "embed_p99_ms": embed.api.p(99),
        "embed_error_rate": error_rate,
        "encoder_batch_gain": ceiling,
    }


def report_steady(
    args: argparse.Namespace, on: Server, token: str, texts: list[str]
) -> dict[str, float]:
    """Part 2, printed; its RESULT fields."""
    print(
        f"\n[2] steady open-loop rates on the batching-on server: /v1/search "
        f"{args.search_rate:g}/s for {args.steady_seconds:g} s (top_k=10), then /v1/answer "
        f"{args.answer_rate:g}/s for {args.answer_seconds:g} s (top_k=4, "
        f"max_new_tokens={args.answer_tokens})"
    )
    search, answer = asyncio.run(
        part_steady(
            on,
            token,
            texts,
            args.search_rate,
            args.answer_rate,
            args.steady_seconds,
            args.answer_seconds,
            args.answer_tokens,
        )
    )
    for load in (search, answer):
        print(
            f"  {load.name:>7}: p50 {load.p(50):7.1f} ms  p99 {load.p(99):7.1f} ms  "
            f"max {percentile_ms(load.latencies, 100):7.1f} ms  n={load.requests} "
            f"errors {load.errors} ({load.codes()}), latest send {load.send_lag * 1e3:.0f}"
            f" ms behind schedule"
        )
    ok = max(answer.statuses.get(200, 0), 1)
    print(
        f"  answer tokens per request: prompt {answer.prompt_tokens / ok:.0f}, completion "
        f"{answer.completion_tokens / ok:.1f}"
    )
    return {"search_p99_ms": search.p(99), "answer_p99_ms": answer.p(99)}


def report_limits(
    args: argparse.Namespace, on: Server, token_a: str, token_b: str, texts: list[str]
) -> dict[str, float]:
    """Part 3, printed; its RESULT fields."""
    rounds = args.limit_rounds or args.rounds
    rate_a = args.overload * args.limit_rpm / 60
    print(
        f"\n[3] rate limits: key A ({args.limit_rpm} rpm) sends {rate_a:g} req/s "
        f"({args.overload:g}x), key B {args.other_rate:g} req/s, both /v1/embed with one "
        f"text, open loop; B measured {args.limit_seconds:g} s alone and {args.limit_seconds:g}"
        f" s beside A (once A's one-minute burst allowance has drained), {rounds} rounds "
        f"alternating"
    )
    limits = asyncio.run(
        part_limits(
            on,
            token_a,
            token_b,
            texts,
            args.limit_rpm,
            args.overload,
            args.other_rate,
            args.limit_seconds,
            rounds,
        )
    )
    ratios = [r.loaded.p(99) / r.alone.p(99) for r in limits]
    flood = pooled("A", [r.flood for r in limits])
    window = pooled("A window", [r.flood_window for r in limits])
    alone = pooled("B alone", [r.alone for r in limits])
    loaded = pooled("B loaded", [r.loaded for r in limits])
    with httpx.Client(timeout=10.0) as client:
        livez = client.get(f"{on.url}/livez").status_code
        readyz = client.get(f"{on.url}/readyz").status_code
    admitted, refused = flood.statuses.get(200, 0), flood.statuses.get(429, 0)
    print(
        f"  A: {flood.requests} requests, {admitted} admitted, {refused} got 429 "
        f"({flood.missing_retry_after} without Retry-After), other "
        f"{flood.requests - admitted - refused}; admitted while B was measured: "
        f"{window.statuses.get(200, 0) / max(window.elapsed, 1e-9):.2f} req/s "
        f"(limit {args.limit_rpm / 60:.2f})"
    )
    print(
        f"  B pooled: alone p50 {alone.p(50):.1f} p99 {alone.p(99):.1f} ms ({alone.codes()})"
        f" | beside A p50 {loaded.p(50):.1f} p99 {loaded.p(99):.1f} ms ({loaded.codes()})"
    )
    print(
        f"  p99 ratio per round {', '.join(f'{x:.2f}' for x in ratios)}; median "
        f"{float(np.median(ratios)):.2f} (target <= 2) | after: /livez {livez} /readyz "
        f"{readyz}, server processes alive: {on.alive()}"
    )
    return {"overload_other_p99_ratio": float(np.median(ratios))}


def report_generation(
    args: argparse.Namespace, on: Server, token: str, texts: list[str]
) -> dict[str, float]:
    """Part 4, printed; its RESULT fields."""
    route = "/v1/chat/completions" if args.gen_route == "chat" else "/v1/generate"
    print(
        f"\n[4] generation concurrency: {args.gen_streams} concurrent streaming {route} "
        f"requests against 1, {args.gen_tokens} new tokens each (greedy; a stream may stop "
        f"early at end-of-sequence, tokens are counted from its usage), {args.gen_rounds} "
        f"rounds alternating"
    )
    cpu0, srv0 = time.process_time(), on.cpu_seconds()
    one, many = asyncio.run(
        part_generation(
            on,
            token,
            texts,
            args.gen_streams,
            args.gen_tokens,
            args.gen_rounds,
            args.gen_route == "chat",
        )
    )
    cpu, srv1 = time.process_time() - cpu0, on.cpu_seconds()
    for run in (one, many):
        n = max(len(run.totals), 1)
        print(
            f"  {run.streams} stream(s): {run.tokens_per_s:6.1f} tokens/s aggregate, "
            f"{run.tokens / n:.1f} tokens per stream, time to first token p50 "
            f"{percentile_ms(run.ttft, 50):.0f} ms p99 {percentile_ms(run.ttft, 99):.0f} ms, "
            f"stream time p50 {percentile_ms(run.totals, 50):.0f} ms p99 "
            f"{percentile_ms(run.totals, 99):.0f} ms, {dict(sorted(run.statuses.items()))}"
        )
    gain = many.tokens_per_s / one.tokens_per_s if one.tokens_per_s else float("nan")
    elapsed = one.elapsed + many.elapsed
    server_cpu = sum(srv1.get(k, 0.0) - srv0.get(k, 0.0) for k in srv1)
    print(
        f"  concurrency gain {gain:.2f}x ({args.gen_streams} streams vs 1, aggregate "
        f"tokens/s) | server cpu {server_cpu / max(elapsed, 1e-9):.2f} cores | load "
        f"generator cpu {cpu / max(elapsed, 1e-9):.2f} cores"
    )
    return {"gen_concurrency_gain": gain}


def main() -> None:
    """Run the parts asked for and print the RESULT line."""
    args = arguments()
    began = time.monotonic()
    parts = {int(x) for x in args.parts.split(",")}
    bundle_dir, index_root = served_inputs(args)
    bundle = OnnxBundle.load(bundle_dir)
    texts = xquad_questions()
    model = OnnxEmbedder(
        bundle.role_dir("embedder"), providers=default_providers(None), threads=args.threads
    )
    tokens = np.mean(model.count_tokens(texts))
    print(
        f"bundle: {bundle_dir} | index: {index_root / args.index_name} | texts: {len(texts)} "
        f"XQuAD questions, {tokens:.1f} tokens on average"
    )

    home = Path(tempfile.mkdtemp(prefix="slipway-bench-serve-"))
    store = FileKeyStore(home / "api_keys.json")
    bench_token, _ = create_key(store, "bench", [Scope.ADMIN], requests_per_minute=UNLIMITED_RPM)
    token_a, _ = create_key(store, "flood", [Scope.ADMIN], requests_per_minute=args.limit_rpm)
    token_b, _ = create_key(store, "other", [Scope.ADMIN], requests_per_minute=UNLIMITED_RPM)
    common = {
        "SLIPWAY_INDEX_ROOT": str(index_root),
        "SLIPWAY_INDEX_NAME": args.index_name,
        "SLIPWAY_THREADS": str(args.threads),
    }
    if args.max_batch_tokens is not None:
        common["SLIPWAY_EMBED_MAX_BATCH_TOKENS"] = str(args.max_batch_tokens)
    servers: list[Server] = []
    result: dict[str, float] = {}
    try:
        servers.append(start_server("api", home, bundle_dir, {**common, "SLIPWAY_ENCODER": "api"}))
        if 1 in parts:
            servers.append(
                start_server("service", home, bundle_dir, {**common, "SLIPWAY_ENCODER": "service"})
            )
        on = servers[0]
        took = wait_ready(servers)
        print(
            f"servers ready in {took:.0f} s: encoder in api :{on.port}"
            + (f", encoder service :{servers[1].port}" if 1 in parts else "")
            + f" (home {home}; SLIPWAY_THREADS={args.threads}, SLIPWAY_EMBED_MAX_BATCH_TOKENS="
            f"{args.max_batch_tokens or 'default'})"
        )
        if 1 in parts:
            result.update(report_embed(args, on, servers[1], model, bench_token, texts))
            servers[1].stop()  # the other parts use the default (encoder in api) server only
        if 2 in parts:
            result.update(report_steady(args, on, bench_token, texts))
        if 3 in parts:
            result.update(report_limits(args, on, token_a, token_b, texts))
        if 4 in parts:
            result.update(report_generation(args, on, bench_token, texts))
        print(f"\nbusy processes at the end: {busy_processes()}")
        cpu = psutil.Process().cpu_times()
        print(
            f"load generator (this process, in-process baseline included): "
            f"{cpu.user + cpu.system:.1f} cpu s over {time.monotonic() - began:.0f} s"
        )
        stop_all()
        keys = (
            "placement_gain",
            "served_fraction",
            "served_cpu_ratio_embed",
            "embed_p99_ms",
            "search_p99_ms",
            "answer_p99_ms",
            "overload_other_p99_ratio",
            "embed_error_rate",
            "encoder_batch_gain",
            "gen_concurrency_gain",
        )
        digits = {"embed_p99_ms": 1, "search_p99_ms": 1, "answer_p99_ms": 1, "embed_error_rate": 3}
        print(
            "\nRESULT "
            + " ".join(f"{k}={result.get(k, float('nan')):.{digits.get(k, 2)}f}" for k in keys)
        )
    except BaseException:
        for server in servers:
            if not server.alive():
                print(
                    f"--- server {server.name} exited; log tail ---\n{server.tail()}",
                    file=sys.stderr,
                )
        raise
    finally:
        stop_all()
        print(f"servers stopped; logs in {home}", file=sys.stderr)


if __name__ == "__main__":
    main()
