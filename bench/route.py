"""Routing benchmark: the latency the router adds over calling an upstream directly, and the
time a call takes when its first upstream is down.

The upstream is a minimal OpenAI-compatible server the benchmark starts on loopback (uvicorn in
a process of its own, so it never shares this process's CPU time). The same chat completion
is sent (1) straight to it with one shared ``httpx.AsyncClient`` and (2) through Slipway's
routing path in this process: resolve the ``model`` (allowed models checked), the fallback
loop, the upstream call on the router's shared client, the ``model`` rewrite and JSON reply,
and the usage settled in the background; (3) the same for a key with a budget, reserved first
in the file usage store (one SQLite transaction in a worker thread). All are timed call by
call, interleaved, and the difference of the medians and p99s to the direct call is
the overhead. Then the fallback: the first model of the chain points at a port nobody listens
on (connection refused), the second at the upstream; and with the first one in its cooldown.

With ``--router URL --upstream URL --key KEY --model ID`` the two paths are real servers over
HTTP instead (e.g. a Slipway router and the Slipway server it names as upstream).

    python -m bench.route [--calls 2000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import Response

from bench._common import print_machine
from slipway.api.auth import Principal
from slipway.api.keys import Budget, Scope
from slipway.api.ratelimit import Limits
from slipway.routing.accounting import reserve
from slipway.routing.models import ModelsConfig, ModelSpec
from slipway.routing.router import Cooldowns, Router
from slipway.routing.upstream import HttpUpstream, dumps
from slipway.routing.usage import FileUsageStore, UsageRecorder

BODY = {
    "model": "up",
    "messages": [{"role": "user", "content": "Where is the Rhine?"}],
    "max_tokens": 8,
}
REPLY = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 0,
    "model": "m",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "In Europe."},
            "finish_reason": "stop",
        }
    ],
    "usage": {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15},
}


def upstream_app() -> FastAPI:
    """The minimal OpenAI-compatible upstream: a fixed chat completion."""
    app = FastAPI()
    payload = json.dumps(REPLY).encode()

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        await request.body()
        return Response(payload, media_type="application/json")

    return app


@contextlib.contextmanager
def upstream_server() -> Iterator[str]:
    """The upstream in a process of its own on a free loopback port; its base URL."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.route", "--serve-upstream", str(port)],
        cwd=Path(__file__).resolve().parents[1],
    )
    base = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.post(f"{base}/chat/completions", json=BODY, timeout=1)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise SystemExit("the upstream did not start") from None
                time.sleep(0.1)
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=15)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def timed(call: Callable[[], Awaitable[Any]], n: int) -> list[float]:
    out = []
    for _ in range(n):
        start = time.perf_counter()
        await call()
        out.append(time.perf_counter() - start)
    return out


async def in_process(base: str, calls: int, rounds: int, home: Path) -> dict[str, float]:
    """Direct vs routed in this process, interleaved; then the fallback times."""
    dead = f"http://127.0.0.1:{free_port()}/v1"
    config = ModelsConfig(
        models=[
            ModelSpec(id="up", base_url=base, timeout_s=10),
            ModelSpec(id="down", base_url=dead, timeout_s=10, fallbacks=["up"], cooldown_s=3600),
        ]
    )
    router = Router(config, ("served:1", "served"), HttpUpstream({}, 64), Cooldowns())
    store = FileUsageStore(home / "usage.db")
    recorder = UsageRecorder(store)
    plain = Principal("key:plain", frozenset(Scope), Limits(), account="key:plain")
    budgeted = Principal(
        "key:bench",
        frozenset(Scope),
        Limits(),
        budget=Budget(tokens_per_day=10**12),
        account="key:bench",
    )
    direct_client = httpx.AsyncClient(limits=httpx.Limits(max_connections=64))

    async def direct() -> Any:
        response = await direct_client.post(f"{base}/chat/completions", json=BODY)
        return response.json()

    async def routed(model: str = "up", caller: Principal = plain) -> bytes:
        spec = router.resolve(model, caller)
        meter = await reserve(store, recorder, caller, spec, 12, 8)

        async def attempt(option: ModelSpec) -> bytes:
            body = {**BODY, "model": option.upstream_model}
            reply = await router.upstream.post(option, "/chat/completions", body)
            reply["model"] = option.id
            used = reply["usage"]
            meter.settle(option, used["prompt_tokens"], used["completion_tokens"])
            return await dumps(reply)

        answer = await router.call(spec, attempt, caller)
        return answer.result

    async def with_budget() -> bytes:
        return await routed("up", budgeted)

    for _ in range(50):  # warm every path (connections, SQLite)
        await direct()
        await routed()
        await with_budget()
    times: dict[str, list[float]] = {"direct": [], "routed": [], "budget": []}
    paths = {"direct": direct, "routed": routed, "budget": with_budget}
    for n in range(rounds):
        order = list(paths) if n % 2 == 0 else list(reversed(paths))
        medians = {}
        for name in order:
            got = await timed(paths[name], calls // rounds)
            times[name] += got
            medians[name] = statistics.median(got) * 1e3
        print(
            f"round {n}: direct p50 {medians['direct']:.3f} ms | routed {medians['routed']:.3f} "
            f"ms | routed, budgeted key {medians['budget']:.3f} ms"
        )
    d, r = times["direct"], times["routed"]
    recorder.flush()
    fallback = []
    for _ in range(20):
        router.cooldowns.succeeded("down")
        start = time.perf_counter()
        await routed("down")
        fallback.append(time.perf_counter() - start)
    cooling = await timed(lambda: routed("down"), 200)
    await router.upstream.aclose()
    await direct_client.aclose()
    recorder.flush()
    out = summary(d, r, fallback, cooling)
    out["budget_overhead_p50_ms"] = (
        statistics.median(times["budget"]) - statistics.median(d)
    ) * 1e3
    out["budget_overhead_p99_ms"] = (percentile(times["budget"], 0.99) - percentile(d, 0.99)) * 1e3
    return out


async def over_http(args: argparse.Namespace) -> dict[str, float]:
    """Direct vs routed against running servers."""
    headers = {"Authorization": f"Bearer {args.key}"}
    client = httpx.AsyncClient(headers=headers, timeout=120)
    body = {**BODY, "model": args.model}

    async def direct() -> Any:
        return (await client.post(f"{args.upstream}/v1/chat/completions", json=body)).json()

    async def routed() -> Any:
        routed_body = {**body, "model": args.routed_model}
        return (await client.post(f"{args.router}/v1/chat/completions", json=routed_body)).json()

    for _ in range(10):
        await direct()
        await routed()
    d, r = [], []
    for n in range(args.rounds):
        order = (direct, routed) if n % 2 == 0 else (routed, direct)
        times = [await timed(f, args.calls // args.rounds) for f in order]
        d += times[0] if n % 2 == 0 else times[1]
        r += times[1] if n % 2 == 0 else times[0]
    await client.aclose()
    return summary(d, r, [], [])


def summary(
    direct: list[float], routed: list[float], fallback: list[float], cooling: list[float]
) -> dict[str, float]:
    out = {
        "direct_p50_ms": statistics.median(direct) * 1e3,
        "direct_p99_ms": percentile(direct, 0.99) * 1e3,
        "routed_p50_ms": statistics.median(routed) * 1e3,
        "routed_p99_ms": percentile(routed, 0.99) * 1e3,
    }
    out["overhead_p50_ms"] = out["routed_p50_ms"] - out["direct_p50_ms"]
    out["overhead_p99_ms"] = out["routed_p99_ms"] - out["direct_p99_ms"]
    out["ratio_p50"] = out["routed_p50_ms"] / out["direct_p50_ms"]
    if fallback:
        out["fallback_s"] = statistics.median(fallback)
        out["cooling_p50_ms"] = statistics.median(cooling) * 1e3
    return out


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--calls", type=int, default=2000)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--serve-upstream", type=int, help=argparse.SUPPRESS)
    p.add_argument("--router", help="A running router's base URL.")
    p.add_argument("--upstream", help="The upstream's base URL (as the router names it).")
    p.add_argument("--key", help="An API key both accept.")
    p.add_argument("--model", default="slipway", help="The upstream's model id.")
    p.add_argument("--routed-model", default="remote", help="The router's id of it.")
    p.add_argument(
        "--acl-docs",
        type=int,
        default=4000,
        help="E-mails indexed for the access-control part (bench/acl.py); 0 skips it.",
    )
    args = p.parse_args()
    if args.serve_upstream:
        import uvicorn

        uvicorn.run(upstream_app(), host="127.0.0.1", port=args.serve_upstream, log_level="error")
        return
    print_machine(len(os.sched_getaffinity(0)))
    if args.router:
        print(f"over HTTP: router {args.router} vs upstream {args.upstream}")
        result = asyncio.run(over_http(args))
    else:
        with upstream_server() as base, tempfile.TemporaryDirectory() as home:
            print(f"in process: routing path vs direct httpx, upstream {base}, {args.calls} calls")
            result = asyncio.run(in_process(base, args.calls, args.rounds, Path(home)))
    print(
        f"direct p50 {result['direct_p50_ms']:.3f} ms p99 {result['direct_p99_ms']:.3f} ms | "
        f"routed p50 {result['routed_p50_ms']:.3f} ms p99 {result['routed_p99_ms']:.3f} ms | "
        f"routed/direct p50 {result['ratio_p50']:.2f}x"
    )
    if "budget_overhead_p50_ms" in result:
        print(
            f"a budgeted key (reserve in the SQLite store first) adds "
            f"{result['budget_overhead_p50_ms']:.3f} ms p50, "
            f"{result['budget_overhead_p99_ms']:.3f} ms p99 over direct"
        )
    if "fallback_s" in result:
        print(
            f"first upstream down (connection refused): {result['fallback_s'] * 1e3:.2f} ms p50 "
            f"to the answer of the next; with it cooling: {result['cooling_p50_ms']:.3f} ms p50"
        )

    # --- document-level access control: search p50 with a 100-group principal set ----------
    acl_search_ratio: float | None = None
    if args.acl_docs:
        from bench import acl
        from bench._common import bundle_for

        print(
            f"\naccess control (bench/acl.py): {args.acl_docs} Enron e-mails, two of 1000 "
            "groups each; a caller with 100 groups against one who reads everything"
        )
        acl_args = argparse.Namespace(
            docs=args.acl_docs,
            queries=300,
            principals=100,
            groups=1000,
            threads=len(os.sched_getaffinity(0)),
        )
        model_dir = bundle_for("embedder", None).role_dir("embedder")
        acl_search_ratio = acl.report(acl.measure(acl_args, model_dir))

    fields = [
        f"route_overhead_p50_ms={result['overhead_p50_ms']:.3f}",
        f"route_overhead_p99_ms={result['overhead_p99_ms']:.3f}",
    ]
    if "budget_overhead_p50_ms" in result:
        fields.append(f"route_budget_overhead_p50_ms={result['budget_overhead_p50_ms']:.3f}")
    if acl_search_ratio is not None:
        fields.append(f"acl_search_ratio={acl_search_ratio:.3f}")
    if "fallback_s" in result:
        fields.append(f"fallback_s={result['fallback_s']:.4f}")
    print("RESULT " + " ".join(fields))


if __name__ == "__main__":
    main()
