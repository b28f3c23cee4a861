"""Tier 1: the models file, routing along fallback chains with cooldowns (against a real HTTP
server on loopback that answers 200, 429, 500, 400, slowly, or breaks its stream), and usage
and budgets counted atomically in the file store (threads and processes racing) and in a
real Valkey."""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from slipway.api import metrics
from slipway.api.auth import Principal
from slipway.api.errors import ApiError
from slipway.api.keys import Budget, Scope
from slipway.api.ratelimit import Limits
from slipway.routing.accounting import reserve
from slipway.routing.models import ModelsConfig, ModelSpec, api_keys, load_models
from slipway.routing.router import Cooldowns, Router, relay
from slipway.routing.upstream import HttpUpstream, UpstreamError
from slipway.routing.usage import (
    FileUsageStore,
    RedisUsageStore,
    Refusal,
    Reservation,
    UsageRecorder,
    UsageStore,
    budget_left,
    periods,
)
from tests.servers import free_port

AT = datetime(2026, 5, 3, 15, 30, tzinfo=UTC)  # for reset times (stores keep recent periods)
NOW = datetime.now(UTC)

# --- the models file -----------------------------------------------------------------------


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "models.yaml"
    path.write_text(text)
    return path


def test_models_file_loads_aliases_and_upstreams(tmp_path: Path) -> None:
    config = load_models(
        write(
            tmp_path,
            """
models:
  - id: local
    price_in: 0.1
    price_out: 0.2
  - id: remote
    base_url: http://127.0.0.1:9/v1
    api_key_env: REMOTE_KEY
    model: gpt-x
    context_window: 8192
    price_in: 1.5
    price_out: 6
    timeout_s: 5
    fallbacks: [local]
    cooldown_s: 10
""",
        ),
    )
    local, remote = config.models
    assert local.local and not remote.local and remote.upstream_model == "gpt-x"
    assert remote.cost(1_000_000, 500_000) == pytest.approx(1.5 + 3.0)
    assert local.upstream_model == "local" and remote.fallbacks == ["local"]


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("models:\n  - id: a\n    colour: red\n", "models.0.colour"),
        ("models:\n  - id: a\n    api_key_env: K\n", "api_key_env is for an upstream"),
        ("models:\n  - id: a\n  - id: a\n", "listed twice: a"),
        ("models:\n  - id: a\n    fallbacks: [a]\n", "cannot fall back to itself"),
        (
            "models:\n  - id: a\n    base_url: http://x/v1\n    api_key_env: K\n"
            "    api_key_secret: S\n",
            "either api_key_env or api_key_secret",
        ),
        ("models:\n  - id: a\n    base_url: ftp://x\n", "models.0.base_url"),
        ("models:\n  - id: a\n    price_in: -1\n", "models.0.price_in"),
        ("models: []\n", "models"),
        ("models: [\n", "cannot read it"),
    ],
)
def test_a_bad_models_file_names_the_field(tmp_path: Path, text: str, named: str) -> None:
    with pytest.raises(ValueError, match="SLIPWAY_MODELS_FILE=") as err:
        load_models(write(tmp_path, text))
    assert named in str(err.value)


def test_a_fallback_must_name_a_model_of_the_file_or_the_served_bundle() -> None:
    config = ModelsConfig(models=[ModelSpec(id="a", fallbacks=["served", "b"])])
    with pytest.raises(ValueError, match="models.0.fallbacks: 'b' is neither"):
        Router(config, ("served:1", "served"), HttpUpstream({}))


def test_keys_come_from_the_environment_or_a_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    config = ModelsConfig(
        models=[
            ModelSpec(id="e", base_url="http://x/v1", api_key_env="SLIPWAY_TEST_KEY"),
            ModelSpec(id="s", base_url="http://x/v1", api_key_secret="openai"),
            ModelSpec(id="none", base_url="http://x/v1"),
        ]
    )
    secrets = {"openai": {"api_key": "from-secret"}}

    def fetch(name: str) -> dict[str, str]:
        return secrets[name]

    with pytest.raises(ValueError, match="SLIPWAY_TEST_KEY"):
        api_keys(config, fetch)
    monkeypatch.setenv("SLIPWAY_TEST_KEY", "from-env")
    assert api_keys(config, fetch) == {"e": "from-env", "s": "from-secret"}
    secrets.clear()
    with pytest.raises(ValueError, match="zenml secret create openai"):
        api_keys(config, fetch)


# --- a real upstream on loopback -------------------------------------------------------------


class Upstreams:
    """One HTTP server whose path prefix says how it answers: ok, busy (429), error (500),
    bad (400), slow (later than any timeout here), broken (a stream cut off)."""

    def __init__(self) -> None:
        self.hits: Counter[str] = Counter()
        self.app = FastAPI()
        self.app.post("/{mode}/v1/{kind:path}")(self.answer)
        self.port = free_port()
        self.server = uvicorn.Server(
            uvicorn.Config(
                self.app,
                host="127.0.0.1",
                port=self.port,
                log_level="warning",
                timeout_graceful_shutdown=1,
            )
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def url(self, mode: str) -> str:
        return f"http://127.0.0.1:{self.port}/{mode}/v1"

    async def answer(self, mode: str, kind: str, request: Request) -> Any:
        self.hits[mode] += 1
        body = await request.json()
        if mode == "busy":
            return JSONResponse({"error": {"message": "slow down"}}, 429, {"Retry-After": "7"})
        if mode == "error":
            return JSONResponse({"error": {"message": "boom"}}, 500)
        if mode == "bad":
            error = {"message": "bad messages", "type": "invalid_request_error", "param": "x"}
            return JSONResponse({"error": {**error, "code": "nope"}}, 400)
        if mode == "slow":
            await asyncio.sleep(2)  # past every timeout here
        if body.get("stream"):
            return StreamingResponse(self.events(mode, body), media_type="text/event-stream")
        return {
            "id": "x",
            "object": "chat.completion",
            "model": body["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}}],
            "usage": {"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14},
        }

    async def events(self, mode: str, body: dict[str, Any]) -> AsyncIterator[bytes]:
        for word in ("one", "two", "three"):
            chunk = {"model": body["model"], "choices": [{"index": 0, "delta": {"content": word}}]}
            yield f"data: {json.dumps(chunk)}\n\n".encode()
            if mode == "broken" and word == "two":
                return
        if (body.get("stream_options") or {}).get("include_usage"):
            used = {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}
            last = {"model": body["model"], "choices": [], "usage": used}
            yield f"data: {json.dumps(last)}\n\n".encode()
        yield b"data: [DONE]\n\n"

    def __enter__(self) -> Upstreams:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline, "upstream did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *_: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture(scope="module")
def upstreams() -> Iterator[Upstreams]:
    with Upstreams() as server:
        yield server


CALLER = Principal("key:t", frozenset(Scope), Limits(), account="key:t")


def router_of(server: Upstreams, *specs: dict[str, Any], clock: list[float]) -> Router:
    models = [
        ModelSpec(
            **{
                "timeout_s": 0.5,
                "cooldown_s": 30,
                **spec,
                "base_url": server.url(spec["base_url"]) if "base_url" in spec else None,
            }
        )
        for spec in specs
    ]
    return Router(
        ModelsConfig(models=models),
        ("served:1", "served"),
        HttpUpstream({}, max_connections=8),
        Cooldowns(clock=lambda: clock[0]),
    )


async def call(router: Router, model: str) -> tuple[Any, str, int]:
    spec = router.resolve(model, CALLER)

    async def attempt(option: ModelSpec) -> Any:
        if option.local:
            return {"local": True}
        return await router.upstream.post(option, "/chat/completions", {"model": option.id})

    try:
        routed = await router.call(spec, attempt, CALLER)
    finally:
        await router.upstream.aclose()
    return routed.result, routed.spec.id, routed.fallbacks


def test_fallback_on_429_5xx_timeout_and_refused_connection(upstreams: Upstreams) -> None:
    clock = [0.0]
    dead = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    router = router_of(
        upstreams,
        {"id": "busy", "base_url": "busy", "fallbacks": ["error", "slow", "dead", "ok"]},
        {"id": "error", "base_url": "error"},
        {"id": "slow", "base_url": "slow"},
        {"id": "dead", "base_url": "ok"},
        {"id": "ok", "base_url": "ok"},
        clock=clock,
    )
    router.models["dead"] = router.models["dead"].model_copy(update={"base_url": dead})
    result, model, fallbacks = asyncio.run(call(router, "busy"))
    assert model == "ok" and fallbacks == 4 and result["usage"]["prompt_tokens"] == 11
    assert all(router.cooldowns.cooling(m) for m in ("busy", "error", "slow", "dead"))
    assert not router.cooldowns.cooling("ok")

    # while they cool, the chain skips them: only the healthy upstream is called
    before = Counter(upstreams.hits)
    assert asyncio.run(call(router, "busy"))[1:] == ("ok", 0)
    assert upstreams.hits - before == Counter({"ok": 1})

    # once the cooldown ends, the first model is tried again
    clock[0] = 31.0
    before = Counter(upstreams.hits)
    assert asyncio.run(call(router, "busy"))[1:] == ("ok", 4)
    assert (upstreams.hits - before)["busy"] == 1


def test_a_cooling_model_is_still_tried_when_it_is_the_last_option(upstreams: Upstreams) -> None:
    clock = [0.0]
    router = router_of(
        upstreams,
        {"id": "a", "base_url": "error", "fallbacks": ["b"]},
        {"id": "b", "base_url": "busy"},
        clock=clock,
    )
    with pytest.raises(ApiError) as err:
        asyncio.run(call(router, "a"))
    assert err.value.status == 429 and err.value.code == "upstream_rate_limited"
    assert err.value.headers() == {"Retry-After": "7"}
    before = Counter(upstreams.hits)
    with pytest.raises(ApiError):
        asyncio.run(call(router, "a"))
    assert upstreams.hits - before == Counter({"busy": 1})  # a skipped, b (last) tried


def test_the_served_bundle_is_a_fallback(upstreams: Upstreams) -> None:
    router = router_of(
        upstreams, {"id": "up", "base_url": "error", "fallbacks": ["served"]}, clock=[0.0]
    )
    assert asyncio.run(call(router, "up")) == ({"local": True}, "served", 1)


def test_a_client_error_passes_through_without_fallback(upstreams: Upstreams) -> None:
    router = router_of(
        upstreams,
        {"id": "a", "base_url": "bad", "fallbacks": ["b"]},
        {"id": "b", "base_url": "ok"},
        clock=[0.0],
    )
    before = Counter(upstreams.hits)
    with pytest.raises(ApiError) as err:
        asyncio.run(call(router, "a"))
    assert (err.value.status, err.value.code, err.value.param) == (400, "nope", "x")
    assert err.value.message == "bad messages" and upstreams.hits - before == Counter({"bad": 1})
    assert not router.cooldowns.cooling("a")


def test_unknown_and_forbidden_models() -> None:
    router = Router(None, ("served:1", "served"), HttpUpstream({}))
    assert router.resolve(None, CALLER).id == "served:1"
    with pytest.raises(ApiError) as err:
        router.resolve("gpt-x", CALLER)
    assert (err.value.status, err.value.code) == (404, "model_not_found")
    narrow = Principal("key:n", frozenset(Scope), Limits(), models=frozenset({"served"}))
    with pytest.raises(ApiError) as err:
        router.resolve("served:1", narrow)
    assert (err.value.status, err.value.code) == (403, "model_not_allowed")
    assert [m.id for m in router.visible(narrow)] == ["served"]
    assert router.resolve("served", narrow).id == "served"


async def relayed(router: Router, mode: str, wants_usage: bool) -> tuple[list[Any], list[Any]]:
    spec = ModelSpec(id="up", base_url=router.models["up"].base_url, timeout_s=5)
    ended: list[Any] = []
    try:
        opened = await router.upstream.open_stream(
            spec,
            "/chat/completions",
            {"model": "m", "stream": True, "stream_options": {"include_usage": True}},
        )
        events = [
            chunk async for chunk in relay(opened, "up", wants_usage, lambda *a: ended.append(a))
        ]
    finally:
        await router.upstream.aclose()
    return [e.decode()[6:].strip() for e in events], ended


def test_streams_pass_through_with_usage_and_end_cleanly_when_cut(upstreams: Upstreams) -> None:
    router = router_of(upstreams, {"id": "up", "base_url": "ok"}, clock=[0.0])
    events, ended = asyncio.run(relayed(router, "ok", wants_usage=False))
    assert events[-1] == "[DONE]" and len(events) == 4  # three pieces; no usage chunk
    assert all(json.loads(e)["model"] == "up" for e in events[:-1])
    assert ended == [((5, 3), 3, False)]  # the usage is known all the same
    events, _ = asyncio.run(relayed(router, "ok", wants_usage=True))
    assert json.loads(events[-2])["usage"]["completion_tokens"] == 3

    router = router_of(upstreams, {"id": "up", "base_url": "broken"}, clock=[0.0])
    events, ended = asyncio.run(relayed(router, "broken", wants_usage=True))
    assert events[-1] == "[DONE]" and json.loads(events[-2])["error"]["code"] == (
        "upstream_stream_broken"
    )
    assert ended == [(None, 2, True)]


def test_a_stream_that_fails_before_its_first_event_can_fall_back(upstreams: Upstreams) -> None:
    router = router_of(upstreams, {"id": "up", "base_url": "error"}, clock=[0.0])
    spec = router.models["up"]

    async def opening() -> None:
        try:
            await router.upstream.open_stream(spec, "/chat/completions", {"stream": True})
        finally:
            await router.upstream.aclose()

    with pytest.raises(UpstreamError) as err:
        asyncio.run(opening())
    assert err.value.retryable and err.value.status == 500


# --- usage and budgets -----------------------------------------------------------------------


def test_budget_refusal_names_the_bound_and_reset(tmp_path: Path) -> None:
    store = FileUsageStore(tmp_path / "usage.db")
    budget = Budget(tokens_per_day=100, cost_per_month=1.0)
    got = store.reserve("key:a", budget, 60, 0.5, AT)
    assert isinstance(got, Reservation)
    refused = store.reserve("key:a", budget, 60, 0.1, AT)
    assert isinstance(refused, Refusal) and (refused.measure, refused.period) == ("tokens", "day")
    assert refused.resets_at == datetime(2026, 5, 4, tzinfo=UTC)
    assert refused.retry_after(AT) == 8 * 3600 + 30 * 60
    assert "tokens per day is 100" in refused.message(60) and "2026-05-04T00:00:00Z" in (
        refused.message(60)
    )
    # settle to the real usage: 20 tokens, 0.2 spent; the budget has the rest
    store.settle(got, "m", 15, 5, 0.2)
    assert budget_left(store, "key:a", budget, AT) == {
        "tokens_per_day": 80.0,
        "cost_per_month": pytest.approx(0.8),
    }
    cost = store.reserve("key:a", budget, 10, 0.9, AT)
    assert isinstance(cost, Refusal) and (cost.measure, cost.period) == ("cost", "month")
    assert cost.resets_at == datetime(2026, 6, 1, tzinfo=UTC)
    day, month = periods(AT)
    assert [(r.model, r.requests, r.tokens_in, r.tokens_out) for r in store.rows(day)] == [
        ("m", 1, 15, 5)
    ]
    assert store.rows(month, "key:b") == []


def _race(path: str, tries: int, granted: Any) -> None:
    store = FileUsageStore(Path(path))
    got = sum(
        isinstance(store.reserve("key:r", Budget(tokens_per_day=100), 1, 0.0, NOW), Reservation)
        for _ in range(tries)
    )
    granted.put(got)


def test_file_store_check_and_add_is_atomic_across_processes(tmp_path: Path) -> None:
    path = str(tmp_path / "usage.db")
    FileUsageStore(Path(path))  # the schema, once
    ctx = multiprocessing.get_context("fork")
    granted = ctx.Queue()
    procs = [ctx.Process(target=_race, args=(path, 40, granted)) for _ in range(6)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert sum(granted.get(timeout=5) for _ in procs) == 100  # of 240 asked


def race_threads(store: UsageStore) -> int:
    def one(_: int) -> bool:
        got = store.reserve("key:t", Budget(cost_per_day=1.0), 1, 0.01, NOW)
        return isinstance(got, Reservation)

    with ThreadPoolExecutor(16) as pool:
        return sum(pool.map(one, range(300)))


def test_file_store_check_and_add_is_atomic_across_threads(tmp_path: Path) -> None:
    store = FileUsageStore(tmp_path / "usage.db")
    assert race_threads(store) == 100  # 1.0 / 0.01, never more


def test_redis_store_reserves_atomically_and_settles(valkey_server_url: str) -> None:
    import redis

    client = redis.Redis.from_url(valkey_server_url)
    store = RedisUsageStore(client, prefix=f"slipway-test-{time.time_ns()}:")
    assert race_threads(store) == 100
    budget = Budget(tokens_per_month=50)
    got = store.reserve("key:r", budget, 40, 0.0, NOW)
    assert isinstance(got, Reservation)
    refused = store.reserve("key:r", budget, 20, 0.0, NOW)
    assert isinstance(refused, Refusal) and refused.period == "month"
    store.settle(got, "m", 7, 3, 0.01)
    assert budget_left(store, "key:r", budget, NOW) == {"tokens_per_month": 40.0}
    day, _ = periods(NOW)
    assert [(r.account, r.model, r.requests, r.tokens_out) for r in store.rows(day)] == [
        ("key:r", "m", 1, 3)
    ]
    ttl = client.ttl(f"{store.prefix}budget:{day}:key:r")
    assert ttl != -1  # every key expires


def test_reserve_refuses_with_a_429_and_records_off_the_loop(tmp_path: Path) -> None:
    store = FileUsageStore(tmp_path / "usage.db")
    seen: list[tuple[Any, ...]] = []
    recorder = UsageRecorder(store, lambda *a: seen.append(a))
    caller = Principal(
        "key:b", frozenset(Scope), Limits(), budget=Budget(tokens_per_day=50), account="key:b"
    )
    spec = ModelSpec(id="m", price_in=1.0, price_out=2.0)
    meter = asyncio.run(reserve(store, recorder, caller, spec, 10, 30))
    with pytest.raises(ApiError) as err:
        asyncio.run(reserve(store, recorder, caller, spec, 10, 30))
    assert (err.value.status, err.value.type, err.value.code) == (
        429,
        "insufficient_quota",
        "budget_exceeded",
    )
    assert "Retry-After" in err.value.headers()
    meter.settle(spec, 10, 5)
    recorder.flush()
    assert seen == [("key:b", "m", 10, 5, pytest.approx(20 / 1e6))]
    unbounded = Principal("key:u", frozenset(Scope), Limits(), account="key:u")
    asyncio.run(reserve(store, recorder, unbounded, spec, 10**9, 10**9)).settle(spec, 1, 1)
    recorder.flush()
    day, _ = periods(datetime.now(UTC))
    assert [r.account for r in store.rows(day)] == ["key:b", "key:u"]


def test_usage_metric_labels_are_bounded() -> None:
    metrics.usage_models(["m"])
    metrics._key_labels.clear()
    for n in range(metrics.MAX_KEY_LABELS + 50):
        metrics.usage(f"key:{n}", "m" if n % 2 else "rogue", 1, 1, 0.5)
    assert len(metrics._key_labels) == metrics.MAX_KEY_LABELS
    assert metrics._key_label("key:brand-new") == "other"


def test_keys_usage_prints_usage_and_budget_left(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from slipway.api.keys import FileKeyStore, create_key
    from slipway.cli import app

    monkeypatch.setenv("SLIPWAY_API_KEYS_FILE", str(tmp_path / "keys.json"))
    monkeypatch.setenv("SLIPWAY_USAGE_FILE", str(tmp_path / "usage.db"))
    _, record = create_key(
        FileKeyStore(tmp_path / "keys.json"),
        "k",
        [Scope.GENERATE],
        budget=Budget(tokens_per_day=500),
    )
    store = FileUsageStore(tmp_path / "usage.db")
    got = store.reserve(f"key:{record.id}", Budget(tokens_per_day=500), 100, 0.0, NOW)
    assert isinstance(got, Reservation)
    store.settle(got, "remote", 30, 20, 0.25)
    out = CliRunner().invoke(app, ["keys", "usage", "--key", record.id])
    assert out.exit_code == 0, out.output
    row = next(line for line in out.output.splitlines() if "remote" in line)
    assert row.split()[2:] == ["1", "30", "20", "0.250000"]
    assert f"key:{record.id}: budget left tokens_per_day 450" in out.output
    assert CliRunner().invoke(app, ["keys", "usage", "--key", "nope"]).exit_code == 1
