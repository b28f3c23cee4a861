"""Fixtures of the end-to-end tier: one real main-job run, and the real service on what it
registered (``slipway serve``, as a user starts it), shared by the modules that need them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.servers import free_port

ROOT = Path(__file__).resolve().parents[2]
BUILD = {"generator": {"quantization": "int8"}}
XQUAD = ROOT.parent / "shared" / "data" / "xquad_en" / "beir"  # used after shared_data checked it
# The main job indexes XQuAD with two articles restricted (document-level access control):
# the session's role keys read as '*', the "engineer" and "outsider" keys do not.
RESTRICTED = {"Nikola_Tesla": ["group:engineering"], "Genghis_Khan": ["user:ann"]}
DEPRECATED = {
    "/v1/completions": {
        "since": "2026-11-01",
        "sunset": "2027-06-30",
        "successor": "/v1/chat/completions",
    }
}


def acl_rows() -> list[dict[str, Any]]:
    """XQuAD's documents, those of the RESTRICTED articles with their ACL."""
    rows = [json.loads(line) for line in (XQUAD / "corpus.jsonl").open()]
    for row in rows:
        if row["title"] in RESTRICTED:
            row["acl"] = RESTRICTED[row["title"]]
    return rows


@pytest.fixture(scope="session")
def acl_corpus(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The main job's corpus: XQuAD's documents with RESTRICTED's ACLs (a JSONL)."""
    path = tmp_path_factory.mktemp("acl") / "corpus.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in acl_rows()))
    return path


@pytest.fixture(scope="session")
def registered(
    zenml_stack: str,
    tiny_embedder: Path,
    tiny_generator: Path,
    shared_data: Path,
    acl_corpus: Path,
) -> dict[str, str]:
    """Run the main job end to end (documents, model build, index refresh) and return the
    model_build's registered_model output."""
    from zenml import Model
    from zenml.client import Client

    from pipelines.llmops import llmops_pipeline

    run = llmops_pipeline.with_options(enable_cache=False, model=Model(name="slipway-e2e"))(
        build=BUILD,
        model_name="slipway-e2e",
        bento=True,
        corpus=str(acl_corpus),
        index={"index_name": "e2e", "eval_dir": str(XQUAD)},
        chunk_tokens=48,
        overlap_tokens=8,
        embedder_path=str(tiny_embedder),
        generator_path=str(tiny_generator),
    )
    run = Client().get_pipeline_run(run.id)
    assert run.status == "completed"
    assert (
        run.steps["publish_index_version"].outputs["published_index_version"][0].load() == "v000001"
    )
    out = run.steps["track_and_register"].outputs["registered_model"][0].load()
    # registered as the challenger; the whole-bundle gate made it champion (nothing to be worse
    # than in a fresh registry; this corpus has no QA set, so answers are not gated)
    gate = run.steps["gate_bundle"].outputs["bundle_gate"][0].load()
    assert gate["champion"] is True and gate["version"] == out["version"], gate
    assert gate["gates"]["retrieval"]["hybrid_ndcg_at_10"] > 0.5, gate
    assert "not measured" in gate["gates"]["answers"]["reason"], gate
    bento_tag = run.steps["build_bento"].outputs["bento_tag"][0].load()
    assert bento_tag.startswith(f"slipway:v{out['version']}-")
    # the published version carries its own graph snapshot, and the gate decided on it
    snapshot = run.steps["build_graph_snapshot"].outputs["graph_snapshot_version"][0].load()
    assert snapshot.version == "v000001"
    graph_stats = run.steps["update_knowledge_graph"].outputs["graph_stats"][0].load()
    # earlier tests of the session may have left other chunkings of these passages in the graph
    assert graph_stats.new + graph_stats.changed + graph_stats.unchanged == 240
    assert graph_stats.counts["Document"] == 240 and graph_stats.counts["Entity"] > 100
    gnn = run.steps["train_graph_embeddings"].outputs["gnn_metrics"][0].load()
    assert gnn["trained"] == 1.0 and gnn["link_auc"] > gnn["random_auc"]
    linked = Client().get_model_version("slipway-e2e", run.model_version.name)
    assert linked.run_metadata["mlflow_model"]["version"] == out["version"]
    return out


@dataclass(frozen=True)
class Server:
    """The running service: its URL, API keys by role, and its log file."""

    base: str
    keys: dict[str, str]
    log: Path
    tracking_uri: str

    def headers(self, role: str = "admin") -> dict[str, str]:
        """Authorization for the key of ``role``."""
        return {"Authorization": f"Bearer {self.keys[role]}"}


def post(
    server: Server, path: str, body: Any, role: str | None = "admin", **kw: Any
) -> httpx.Response:
    """POST JSON with the key of ``role`` (no credentials when ``role`` is None)."""
    headers = {**(server.headers(role) if role else {}), **kw.pop("headers", {})}
    return httpx.post(
        f"{server.base}{path}", json=body, headers=headers, timeout=kw.pop("timeout", 60), **kw
    )


def _create_keys(home: Path) -> dict[str, str]:
    from slipway.api.keys import FileKeyStore, Scope, create_key

    store = FileKeyStore(home / "api_keys.json")
    every = [Scope.SEARCH, Scope.GENERATE, Scope.EMBED]
    specs = {
        "admin": ([Scope.ADMIN], 100_000, None, ["*"]),
        "embed": ([Scope.EMBED], 100_000, None, ["*"]),
        "generate": ([Scope.GENERATE], 100_000, None, ["*"]),
        "search": ([Scope.SEARCH], 100_000, None, ["*"]),
        "limited": ([Scope.EMBED], 3, None, ["*"]),
        "tokens": ([Scope.EMBED], 100_000, 40, ["*"]),
        "fuzz": ([Scope.ADMIN], 1_000_000, None, ["*"]),
        "engineer": (every, 100_000, None, ["group:engineering", "user:bob"]),
        "outsider": (every, 100_000, None, []),
    }
    return {
        role: create_key(
            store,
            f"e2e-{role}",
            scopes,
            requests_per_minute=rpm,
            tokens_per_minute=tpm,
            principals=principals,
        )[0]
        for role, (scopes, rpm, tpm, principals) in specs.items()
    }


@contextmanager
def serving(
    tracking_uri: str,
    log_path: Path,
    ready: bool = True,
    args: tuple[str, ...] = (),
    started: list[subprocess.Popen[bytes]] | None = None,
    port: int | None = None,
    **settings: str,
) -> Iterator[str]:
    """`slipway serve` on the registered e2e champion with ``SLIPWAY_*`` ``settings`` (and
    more ``args``), as a user starts it; yields its URL once it is live (and ready, unless
    ``ready`` is false). ``started`` receives the `slipway serve` process; ``port``: a port
    reserved beforehand (default: a free one)."""
    port = port or free_port()
    # its own BentoML home: a starting server empties the Prometheus multiprocess directory
    # under BENTOML_HOME, which would wipe the metrics of another server sharing it
    env = {
        **os.environ,
        "BENTOML_HOME": str(log_path.parent / f"bentoml-{port}"),
        "SLIPWAY_REGISTERED_MODEL_NAME": "slipway-e2e",
        "SLIPWAY_THREADS": "1",
        "SLIPWAY_MAX_TEXTS": "8",
        "SLIPWAY_MAX_CHARS": "500",
        "SLIPWAY_MAX_NEW_TOKENS": "128",  # room for a constrained JSON reply
        **{f"SLIPWAY_{k.upper()}": v for k, v in settings.items()},
    }
    log = open(log_path, "w")  # noqa: SIM115
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "slipway.cli",
            "serve",
            "--port",
            str(port),
            "--tracking-uri",
            tracking_uri,
            *args,
        ],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    if started is not None:
        started.append(proc)
    base = f"http://127.0.0.1:{port}"
    probe = "/readyz" if ready else "/livez"
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"server exited with {proc.returncode}: {log_path.read_text()[-3000:]}")
            try:
                if httpx.get(f"{base}{probe}", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(1)
        else:
            pytest.fail(f"server not up in 240 s: {log_path.read_text()[-3000:]}")
        yield base
    finally:
        stop_group(proc)
        log.close()


@pytest.fixture(scope="session")
def server(
    registered: dict[str, str], graph_server: object, valkey_server_url: str
) -> Iterator[Server]:
    """The service on the e2e index, with rate limits and the result cache in a real Valkey,
    traces to MLflow, and one route marked deprecated."""
    home = Path(os.environ["SLIPWAY_HOME"])
    keys = _create_keys(home)
    log_path = home.parent / "serve.log"
    with serving(
        registered["tracking_uri"],
        log_path,
        max_body_bytes="8192",
        index_name="e2e",
        rate_limit_store="redis",
        cache="redis",
        redis_url=valkey_server_url,
        trace_sample_rate="1.0",
        deprecated_routes=json.dumps(DEPRECATED),
    ) as base:
        yield Server(base, keys, log_path, registered["tracking_uri"])


def server_sessions(proc: subprocess.Popen[bytes]) -> set[int]:
    """The sessions of ``proc`` and everything it started (`slipway serve` starts BentoML in
    a session of its own)."""
    import psutil

    try:
        family = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return set()
    sessions = set()
    for member in family:
        try:
            sessions.add(os.getsid(member.pid))
        except ProcessLookupError:
            continue
    return sessions


def stop_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM `slipway serve` (it drains and stops its server), then make sure: SIGTERM and
    SIGKILL whatever of its sessions is left; nothing if it is gone."""
    from slipway.process import stop_session

    sessions = server_sessions(proc)
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
    for sid in sessions:
        stop_session(sid)
