"""Tier 1: what keeps the service up under the traffic users bring: searches that cannot
deadlock their worker threads, cheap checks before a body is read or a slot taken, bounded
waits, bounded metric labels, a liveness watchdog, and a server process that leaves nothing
behind."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest

from slipway.api import metrics
from slipway.api.errors import ApiError
from slipway.api.middleware import ApiMiddleware, Deadlines, Load
from slipway.api.watchdog import Watchdog
from slipway.process import session_members
from slipway.retrieval.fusion import Hit
from slipway.retrieval.hybrid import HybridSearcher
from slipway.retrieval.sparse import SparseIndex

ROOT = Path(__file__).resolve().parents[2]
TEXTS = [
    f"document {i} about {topic} and {i % 7} other things"
    for i, topic in enumerate(["rivers", "flight", "graphs", "onnx", "poland"] * 20)
]


class SlowDense:
    """A real dense reader (cosine over numpy) that takes a while, like a busy store."""

    def __init__(self, vectors: np.ndarray, ids: Sequence[str], delay: float) -> None:
        self.vectors, self.ids_, self.delay = vectors, list(ids), delay

    def search(self, vectors: np.ndarray, k: int = 10, filters: Any = None) -> list[list[Hit]]:
        time.sleep(self.delay)
        scores = np.asarray(vectors) @ self.vectors.T
        return [[(self.ids_[j], float(row[j])) for j in np.argsort(-row)[:k]] for row in scores]

    def count(self) -> int:
        return len(self.ids_)

    def ids(self) -> set[str]:
        return set(self.ids_)


class HashEmbedder:
    """Deterministic unit vectors from the words of a text (no model needed)."""

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), 64), np.float32)
        for i, text in enumerate(texts):
            for word in text.split():
                out[i, hash(word) % 64] += 1.0
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)


def searcher(delay: float = 0.01) -> HybridSearcher:
    ids = [f"d{i}#0" for i in range(len(TEXTS))]
    embedder = HashEmbedder()
    return HybridSearcher(
        embedder, SlowDense(embedder.embed(TEXTS), ids, delay), SparseIndex.build(ids, TEXTS)
    )


def test_many_concurrent_searches_finish_on_a_small_pool() -> None:
    """64 searches in flight on 2 worker threads: the old seam (a search in the pool waiting
    on its sparse half queued in the same pool) deadlocked from 8 on; each part is a leaf now."""
    hybrid = searcher()
    queries = [f"{topic} {i}" for i, topic in enumerate(["rivers", "graphs", "onnx"] * 22)][:64]

    async def burst() -> list[list[list[Hit]]]:
        asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(max_workers=2))
        return await asyncio.wait_for(
            asyncio.gather(*(hybrid.search_async([q], 5) for q in queries)), timeout=120
        )

    results = asyncio.run(burst())
    assert [r[0] for r in results] == [hybrid.search([q], 5)[0] for q in queries]


def test_an_async_embed_function_replaces_the_embedder() -> None:
    hybrid = searcher(delay=0.0)
    vectors = HashEmbedder().embed(["rivers 3"])

    async def embed(queries: list[str]) -> np.ndarray:
        return HashEmbedder().embed(queries)

    remote = HybridSearcher(None, hybrid.dense, hybrid.sparse)
    got = asyncio.run(remote.search_async(["rivers 3"], 5, embed=embed))
    assert got == [hybrid.search_vectors(["rivers 3"], vectors, 5)[0]]
    with pytest.raises(ValueError, match="no embedder"):
        remote.search(["rivers"], 5)


# --- the middleware, driven over raw ASGI messages (slow and vanishing clients) --------------


async def ok_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    if scope["path"] == "/v1/slow":
        await asyncio.sleep(30)
    data = json.dumps({"bytes": len(body)}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": data})


def middleware(gate: Any = None, **deadlines: float) -> ApiMiddleware:
    return ApiMiddleware(
        ok_app,
        max_body_bytes=1000,
        max_concurrency=2,
        gate=gate,
        deadlines=Deadlines(**{"body_seconds": 0.3, "response_seconds": 0.3, **deadlines}),
        load=Load(2),
    )


def scope_of(path: str, key: str | None = None, method: str = "POST") -> dict[str, Any]:
    headers = [(b"content-type", b"application/json"), (b"content-length", b"1000")]
    if key:
        headers.append((b"authorization", f"Bearer {key}".encode()))
    return {"type": "http", "method": method, "path": path, "headers": headers}


async def call(mw: ApiMiddleware, scope: dict[str, Any], receive: Any) -> dict[str, Any]:
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await mw(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return {
        "status": start["status"],
        "headers": dict(start["headers"]),
        "body": json.loads(body) if body else None,
    }


async def key_gate(scope: dict[str, Any], headers: dict[str, str]) -> ApiError | None:
    if headers.get("authorization") != "Bearer good":
        return ApiError(401, "Unknown API key.", type="authentication_error")
    return None


def test_a_request_without_a_key_is_refused_before_its_body_is_read() -> None:
    reads = 0

    async def never_sends() -> dict[str, Any]:
        nonlocal reads
        reads += 1
        await asyncio.sleep(3600)
        raise AssertionError

    async def run() -> list[dict[str, Any]]:
        mw = middleware(key_gate)
        return await asyncio.gather(
            *(call(mw, scope_of("/v1/search"), never_sends) for _ in range(64))
        )

    replies = asyncio.run(asyncio.wait_for(run(), 10))
    assert {r["status"] for r in replies} == {401} and reads == 0


def test_a_slow_body_gets_408_and_frees_its_slot() -> None:
    async def trickle() -> dict[str, Any]:
        await asyncio.sleep(1)
        return {"type": "http.request", "body": b"{", "more_body": True}

    async def run() -> tuple[dict[str, Any], dict[str, Any], int]:
        mw = middleware(key_gate)
        slow = await call(mw, scope_of("/v1/search", "good"), trickle)
        fine = await call(mw, scope_of("/v1/search", "good"), body_receiver(b"{}"))
        return slow, fine, mw.in_flight

    slow, fine, in_flight = asyncio.run(run())
    assert slow["status"] == 408 and slow["body"]["error"]["code"] == "body_timeout"
    assert fine["status"] == 200 and fine["body"] == {"bytes": 2} and in_flight == 0


def body_receiver(body: bytes) -> Any:
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            await asyncio.sleep(3600)
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive


def test_past_its_deadline_a_request_gets_504_with_retry_after_and_frees_its_slot() -> None:
    async def run() -> tuple[list[dict[str, Any]], int]:
        mw = middleware(key_gate)
        replies = await asyncio.gather(
            *(call(mw, scope_of("/v1/slow", "good"), body_receiver(b"{}")) for _ in range(5))
        )
        return list(replies), mw.in_flight

    replies, in_flight = asyncio.run(asyncio.wait_for(run(), 20))
    statuses = sorted(r["status"] for r in replies)
    assert statuses == [503, 503, 503, 504, 504] and in_flight == 0  # 2 slots, 3 shed
    for reply in replies:
        assert reply["headers"][b"retry-after"] == b"1"
        assert reply["body"]["error"]["code"] in ("timeout", "overloaded")


def test_a_client_that_disconnects_mid_body_leaks_no_slot() -> None:
    messages = iter(
        [{"type": "http.request", "body": b"{", "more_body": True}, {"type": "http.disconnect"}]
    )

    async def receive() -> dict[str, Any]:
        return next(messages)

    async def run() -> int:
        mw = middleware(key_gate)
        sent: list[dict[str, Any]] = []

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await mw(scope_of("/v1/search", "good"), receive, send)
        assert sent == []  # nobody to answer
        return mw.in_flight

    assert asyncio.run(run()) == 0


def test_oversized_paths_and_credentials_are_refused_with_the_field_named() -> None:
    async def run() -> tuple[dict[str, Any], dict[str, Any]]:
        mw = middleware(key_gate)
        long_path = await call(mw, scope_of("/v1/" + "x" * 5000, "good"), body_receiver(b"{}"))
        long_key = await call(mw, scope_of("/v1/search", "k" * 5000), body_receiver(b"{}"))
        return long_path, long_key

    long_path, long_key = asyncio.run(run())
    assert long_path["status"] == 414 and long_path["body"]["error"]["param"] == "path"
    assert long_key["status"] == 431 and long_key["body"]["error"]["param"] == "authorization"


def test_metric_labels_come_from_templates_and_fixed_sets() -> None:
    templates = [
        (re.compile(r"^/v1/graph/entities/(?P<name>[^/]+)$"), "/v1/graph/entities/{name}"),
        (re.compile(r"^/v1/search$"), "/v1/search"),
    ]
    rng = np.random.default_rng(0)
    paths = [
        "/" + "".join(rng.choice(list("abc/%\x00é"), size=int(n)))
        for n in rng.integers(1, 300, size=1000)
    ]
    labels = {metrics.path_label(p, templates) for p in paths}
    labels |= {metrics.path_label(f"/v1/graph/entities/{i}", templates) for i in range(100)}
    assert labels <= {"other", "/v1/graph/entities/{name}", "/v1/search", "/metrics"}
    assert metrics.path_label("/livez", templates) == "/livez"


# --- liveness -----------------------------------------------------------------------------


def test_the_watchdog_fails_while_the_worker_threads_make_no_progress() -> None:
    async def run() -> tuple[bool, bool, list[str], bool]:
        loop = asyncio.get_running_loop()
        loop.set_default_executor(ThreadPoolExecutor(max_workers=1))
        dog = Watchdog(stall_seconds=0.6, interval=0.1)
        dog.ensure_started(loop)
        await asyncio.sleep(0.5)
        healthy = dog.alive()
        release = threading.Event()
        blocked = loop.run_in_executor(None, release.wait)  # the only thread, stuck
        await asyncio.sleep(1.5)
        stuck, stalled = dog.alive(), dog.stalled()
        release.set()
        await blocked
        await asyncio.sleep(0.5)
        recovered = dog.alive()
        dog.stop()
        return healthy, stuck, stalled, recovered

    healthy, stuck, stalled, recovered = asyncio.run(run())
    assert healthy and not stuck and stalled == ["executor"] and recovered


# --- process ownership -----------------------------------------------------------------------

SERVER = textwrap.dedent("""
    import os, signal, subprocess, sys, time
    # a worker that ignores SIGTERM, started the way a process manager does, and one more
    # process that double-forks away from its parent (re-parented to init)
    stubborn = subprocess.Popen([sys.executable, "-c",
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"])
    orphan = subprocess.Popen([sys.executable, "-c",
        "import os, time, sys; pid = os.fork();\\n"
        "if pid: open(sys.argv[1], 'w').write(str(pid)); os._exit(0)\\n"
        "time.sleep(600)", sys.argv[1] + ".orphan"])
    open(sys.argv[1], "w").write(str(stubborn.pid))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # drains at once, forgets its workers
    time.sleep(600)
""")


def test_serve_stops_every_process_it_started_on_sigterm(tmp_path: Path) -> None:
    script, pidfile = tmp_path / "server.py", tmp_path / "pid"
    script.write_text(SERVER)
    owner = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from slipway.process import run_owned; "
            f"sys.exit(run_owned([sys.executable, {str(script)!r}, "
            f"{str(pidfile)!r}], drain_seconds=5))",
        ],
        cwd=ROOT,
    )
    deadline = time.monotonic() + 60
    while not (pidfile.exists() and Path(f"{pidfile}.orphan").exists()):
        assert time.monotonic() < deadline and owner.poll() is None
        time.sleep(0.1)
    time.sleep(0.3)
    stubborn, orphan = int(pidfile.read_text()), int(Path(f"{pidfile}.orphan").read_text())
    server_sid = os.getsid(stubborn)
    assert psutil.pid_exists(orphan) and os.getsid(orphan) == server_sid
    owner.send_signal(signal.SIGTERM)
    assert owner.wait(timeout=30) == 0
    assert not session_members(server_sid)
    for pid in (stubborn, orphan):
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_a_stream_that_fails_midway_ends_with_an_error_event() -> None:
    async def streaming(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/event-stream")],
            }
        )
        await send(
            {"type": "http.response.body", "body": b'data: {"text": "a"}\n\n', "more_body": True}
        )
        raise ApiError(
            504,
            "The generator did not answer within 1 s; retry shortly.",
            type="server_error",
            code="timeout",
        )

    mw = ApiMiddleware(streaming, max_body_bytes=1000, max_concurrency=2, gate=key_gate)
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(mw(scope_of("/v1/chat/completions", "good"), body_receiver(b"{}"), send))
    bodies = [m for m in sent if m["type"] == "http.response.body"]
    assert sent[0]["status"] == 200 and bodies[-1]["more_body"] is False
    last = json.loads(bodies[-1]["body"].decode().removeprefix("data: "))
    assert last["error"]["code"] == "timeout" and mw.in_flight == 0


def gated_app(tmp_path: Path, settings: Any) -> tuple[Any, Any, dict[str, str]]:
    """An app over real authentication and rate limiting only (no models), a test client and
    the headers of an admin key."""
    import types

    from fastapi.testclient import TestClient

    from slipway.api.app import create_app
    from slipway.api.auth import Authenticator
    from slipway.api.keys import FileKeyStore, Scope, create_key
    from slipway.api.ratelimit import MemoryRateLimiter
    from slipway.config import ApiSettings

    store = FileKeyStore(tmp_path / "keys.json")
    key = create_key(store, "t", [Scope.ADMIN])[0]
    gatekeeping = types.SimpleNamespace(
        auth=Authenticator(store, ApiSettings()),
        limiter=MemoryRateLimiter(),
        remote_credentials=False,
    )
    app = create_app(settings, gatekeeping)  # type: ignore[arg-type]
    return app, TestClient(app), {"Authorization": f"Bearer {key}"}


def test_the_app_knows_its_routes_for_405s_labels_and_deprecation(tmp_path: Path) -> None:
    from slipway.api.app import api_routes
    from slipway.config import ServeSettings

    gone = {"since": "2026-11-01", "sunset": "2027-06-30", "successor": "/v1/chat/completions"}
    settings = ServeSettings(deprecated_routes={"/v1/completions": gone})
    app, client, auth = gated_app(tmp_path, settings)
    wrong = client.get("/v1/embed", headers=auth)
    assert wrong.status_code == 405 and wrong.headers["allow"] == "POST"
    assert client.get("/v1/nothing", headers=auth).status_code == 404
    assert client.get("/v1/nothing").status_code == 401  # no key: refused before routing
    assert app.openapi()["paths"]["/v1/completions"]["post"]["deprecated"] is True
    templates = [(r.path_regex, r.path) for r in api_routes()]
    assert set(app.openapi()["paths"]) == {path for _, path in templates}
    assert metrics.path_label("/v1/graph/entities/Warsaw", templates) == "/v1/graph/entities/{name}"


def test_request_limits_come_from_the_app_settings_not_the_import(tmp_path: Path) -> None:
    from pydantic import ValidationError

    from slipway.api.schemas import ACTIVE_LIMITS, EmbedRequest, GenerateRequest, Limits
    from slipway.config import ServeSettings

    _, client, auth = gated_app(
        tmp_path, ServeSettings(max_texts=2, max_chars=20, max_new_tokens=8)
    )
    refused = client.post("/v1/embed", json={"texts": ["a", "b", "c"]}, headers=auth)
    assert refused.status_code == 400
    error = refused.json()["error"]
    assert error["param"] == "texts" and "at most 2 texts (SLIPWAY_MAX_TEXTS)" in error["message"]
    long = client.post("/v1/generate", json={"prompt": "x" * 21}, headers=auth).json()["error"]
    assert long["param"] == "prompt" and "SLIPWAY_MAX_CHARS" in long["message"]
    many = client.post("/v1/generate", json={"prompt": "hi", "max_new_tokens": 9}, headers=auth)
    assert many.json()["error"]["param"] == "max_new_tokens"

    # the same models elsewhere in the process: the defaults, or whatever limits are active
    assert len(EmbedRequest(texts=["a", "b", "c"]).texts) == 3
    assert GenerateRequest(prompt="hi").max_new_tokens == 64
    token = ACTIVE_LIMITS.set(Limits(max_texts=2, max_chars=20, max_new_tokens=8))
    try:
        assert GenerateRequest(prompt="hi").max_new_tokens == 8  # the default, bounded
        with pytest.raises(ValidationError, match="at most 2 texts"):
            EmbedRequest(texts=["a", "b", "c"])
    finally:
        ACTIVE_LIMITS.reset(token)
