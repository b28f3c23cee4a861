"""Tier 3: one endpoint for many models. A real Slipway server routes by ``model`` to a second
real Slipway server (its upstream, named in the router's models file) with the router's own
bundle as the fallback: chat (whole and streamed), completions and embeddings through it,
usage and cost recorded per key and model (``slipway keys usage``), a budget 429, a model the
key may not call (403), and then the upstream killed mid-run: requests keep succeeding through
the fallback, and the cooldown skips the dead upstream."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path

import httpx
import psutil
import pytest

from slipway.api.keys import Budget, FileKeyStore, Scope, create_key
from slipway.routing.usage import FileUsageStore, periods
from tests.e2e.conftest import ROOT, serving
from tests.servers import free_port, wait_until

MODELS = """
models:
  - id: local
    price_in: 1
    price_out: 2
  - id: remote
    base_url: http://127.0.0.1:{port}/v1
    api_key_env: SLIPWAY_E2E_UPSTREAM_KEY
    model: slipway-e2e
    price_in: 10
    price_out: 20
    timeout_s: 30
    fallbacks: [local]
    cooldown_s: 3600
"""
CHAT = {"messages": [{"role": "user", "content": "Where is the Rhine?"}], "max_tokens": 8}


def kill_hard(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL `slipway serve` and every process it started (by pid: only ours)."""
    family = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    for member in family:
        try:
            member.send_signal(signal.SIGKILL)
        except psutil.Error:
            continue
    psutil.wait_procs(family, timeout=30)


def usage_cli(env: dict[str, str], key_id: str) -> subprocess.CompletedProcess[str]:
    """`slipway keys usage --key ID` as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "slipway.cli", "keys", "usage", "--key", key_id],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )


def test_router_with_a_real_upstream_budgets_and_fallback(
    registered: dict[str, str], tmp_path: Path
) -> None:
    keys_file, usage_file = tmp_path / "keys.json", tmp_path / "usage.db"
    store = FileKeyStore(keys_file)
    admin, admin_record = create_key(
        store, "router-admin", [Scope.ADMIN], requests_per_minute=10**6
    )
    narrow = create_key(store, "narrow", [Scope.ADMIN], models=["local"])[0]
    budgeted, budget_record = create_key(
        store, "budgeted", [Scope.ADMIN], budget=Budget(tokens_per_day=100)
    )
    port = free_port()
    models_file = tmp_path / "models.yaml"
    models_file.write_text(MODELS.format(port=port))
    common = {"index_name": "e2e", "api_keys_file": str(keys_file)}
    upstream_started: list[subprocess.Popen[bytes]] = []
    with ExitStack() as stack, ThreadPoolExecutor(2) as pool:
        # both servers start at once (each loads its models for ~40 s)
        up = pool.submit(
            stack.enter_context,
            serving(
                registered["tracking_uri"],
                tmp_path / "upstream.log",
                started=upstream_started,
                port=port,  # the one the router's models file names
                **common,
            ),
        )
        router = pool.submit(
            stack.enter_context,
            serving(
                registered["tracking_uri"],
                tmp_path / "router.log",
                models_file=str(models_file),
                usage_file=str(usage_file),
                e2e_upstream_key=admin,
                **common,
            ),
        )
        assert up.result() == f"http://127.0.0.1:{port}"
        base = router.result()

        def post(path: str, body: dict[str, object], key: str = admin) -> httpx.Response:
            return httpx.post(
                f"{base}{path}", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=60
            )

        # /v1/models lists every model the caller may name
        listed = httpx.get(f"{base}/v1/models", headers={"Authorization": f"Bearer {admin}"})
        ids = [m["id"] for m in listed.json()["data"]]
        assert {"local", "remote", "slipway-e2e"} <= set(ids) and "index" in listed.json()
        remote_card = next(m for m in listed.json()["data"] if m["id"] == "remote")
        assert remote_card["price_in"] == 10 and remote_card["fallbacks"] == ["local"]

        # chat, completions and embeddings through the upstream
        chat = post("/v1/chat/completions", {**CHAT, "model": "remote"})
        assert chat.status_code == 200, chat.text
        assert chat.json()["model"] == "remote" and chat.headers["x-slipway-model"] == "remote"
        assert chat.headers["x-slipway-fallbacks"] == "0" and chat.json()["usage"]["prompt_tokens"]
        done = post("/v1/completions", {"model": "remote", "prompt": "The Rhine", "max_tokens": 4})
        assert done.status_code == 200 and done.json()["object"] == "text_completion"
        vectors = post("/v1/embeddings", {"model": "remote", "input": ["a", "b"]})
        assert vectors.status_code == 200 and len(vectors.json()["data"]) == 2
        assert vectors.json()["model"] == "remote"
        local = post("/v1/chat/completions", {**CHAT, "model": "local"})
        assert local.status_code == 200 and local.headers["x-slipway-model"] == "local"

        # a stream passes through, usage last when asked for
        with httpx.stream(
            "POST",
            f"{base}/v1/chat/completions",
            json={
                **CHAT,
                "model": "remote",
                "stream": True,
                "stream_options": {"include_usage": True},
            },
            headers={"Authorization": f"Bearer {admin}"},
            timeout=60,
        ) as stream:
            assert stream.headers["x-slipway-model"] == "remote"
            events = [line[6:] for line in stream.iter_lines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]"
        chunks = [json.loads(e) for e in events[:-1]]
        assert all(c["model"] == "remote" for c in chunks) and chunks[-1]["usage"]["total_tokens"]

        # usage and cost per key and model, from the store and the CLI
        day, _ = periods(datetime.now(UTC))
        account = f"key:{admin_record.id}"
        usage = FileUsageStore(usage_file)

        def recorded() -> bool:
            rows = {r.model: r for r in usage.rows(day, account)}
            return rows.get("remote") is not None and rows["remote"].requests >= 4

        wait_until(recorded, "usage of the routed calls")
        rows = {r.model: r for r in usage.rows(day, account)}
        remote = rows["remote"]
        assert remote.cost == pytest.approx((remote.tokens_in * 10 + remote.tokens_out * 20) / 1e6)
        assert rows["local"].requests >= 1 and rows["local"].tokens_in > 0
        env = {
            **os.environ,
            "SLIPWAY_API_KEYS_FILE": str(keys_file),
            "SLIPWAY_USAGE_FILE": str(usage_file),
        }
        cli = usage_cli(env, admin_record.id)
        assert "remote" in cli.stdout and "local" in cli.stdout and account in cli.stdout

        # a budget: spent within it, then a 429 naming the bound and its reset
        small = post("/v1/chat/completions", {**CHAT, "model": "remote"}, budgeted)
        assert small.status_code == 200, small.text
        over = post(
            "/v1/chat/completions", {**CHAT, "model": "remote", "max_tokens": 120}, budgeted
        )
        assert over.status_code == 429 and over.json()["error"]["code"] == "budget_exceeded"
        assert over.json()["error"]["type"] == "insufficient_quota"
        assert (
            "tokens per day" in over.json()["error"]["message"]
            and int(over.headers["retry-after"]) > 0
        )
        cli = usage_cli(env, budget_record.id)
        assert "budget left tokens_per_day" in cli.stdout

        # a model the key may not call: 403, and hidden from its list
        refused = post("/v1/chat/completions", {**CHAT, "model": "remote"}, narrow)
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "model_not_allowed"
        mine = httpx.get(f"{base}/v1/models", headers={"Authorization": f"Bearer {narrow}"})
        assert [m["id"] for m in mine.json()["data"]] == ["local"]
        unknown = post("/v1/chat/completions", {**CHAT, "model": "gpt-nope"})
        assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "model_not_found"

        # the upstream dies mid-run: requests in flight and after fall back to the local model
        answers: list[httpx.Response] = []
        stop = threading.Event()

        def traffic() -> None:
            while not stop.is_set() and len(answers) < 2000:  # bounded either way
                answers.append(post("/v1/chat/completions", {**CHAT, "model": "remote"}))

        sender = threading.Thread(target=traffic)
        sender.start()
        wait_until(lambda: len(answers) >= 2, "traffic through the upstream", seconds=60)
        kill_hard(upstream_started[0])
        after_kill = len(answers)
        wait_until(lambda: len(answers) >= after_kill + 3, "traffic after the kill", seconds=120)
        stop.set()
        sender.join(timeout=120)
        assert [a.status_code for a in answers] == [200] * len(answers)
        served_by = [a.headers["x-slipway-model"] for a in answers]
        assert served_by[0] == "remote" and served_by[-1] == "local"
        # the first call after the kill fell back once; later ones skip the cooling upstream
        fell = [
            int(a.headers["x-slipway-fallbacks"])
            for a in answers
            if a.headers["x-slipway-model"] == "local"
        ]
        assert fell[0] == 1 and fell[-1] == 0
        cooled = post("/v1/chat/completions", {**CHAT, "model": "remote"})
        assert cooled.status_code == 200 and cooled.headers["x-slipway-fallbacks"] == "0"
        assert cooled.json()["model"] != "remote"

        metrics = httpx.get(f"{base}/metrics").text
        counted = [
            line
            for line in metrics.splitlines()
            if line.startswith("slipway_usage_tokens_total{") and f'key="{account}"' in line
        ]
        assert any('model="remote"' in line for line in counted), counted
