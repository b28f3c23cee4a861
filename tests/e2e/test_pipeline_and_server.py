"""Tier 3: a real model_build run (tiny models) in a temporary ZenML/MLflow home, then the
real BentoML service over HTTP on the version it registered."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
BUILD = {"generator": {"quantization": "int8"}}
XQUAD = ROOT.parent / "shared" / "data" / "xquad_en" / "beir"  # used after shared_data checked it


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def registered(zenml_stack: str, tiny_embedder: Path, tiny_generator: Path,
               shared_data: Path) -> dict[str, str]:
    """Run the main job end to end (documents, model build, index refresh) and return the
    model_build's registered_model output."""
    from zenml import Model
    from zenml.client import Client

    from pipelines.llmops import llmops_pipeline

    run = llmops_pipeline.with_options(enable_cache=False, model=Model(name="slipway-e2e"))(
        build=BUILD, model_name="slipway-e2e", bento=True, corpus=str(XQUAD),
        index={"index_name": "e2e", "eval_dir": str(XQUAD)}, chunk_tokens=48, overlap_tokens=8,
        embedder_path=str(tiny_embedder), generator_path=str(tiny_generator),
    )
    run = Client().get_pipeline_run(run.id)
    assert run.status == "completed"
    assert run.steps["publish_index_version"].outputs["published_index_version"][0].load() == "v000001"
    out = run.steps["track_and_register"].outputs["registered_model"][0].load()
    bento_tag = run.steps["build_bento"].outputs["bento_tag"][0].load()
    assert bento_tag.startswith(f"slipway:v{out['version']}-")
    graph_stats = run.steps["update_knowledge_graph"].outputs["graph_stats"][0].load()
    # earlier tests of the session may have left other chunkings of these passages in the graph
    assert graph_stats.new + graph_stats.changed + graph_stats.unchanged == 240
    assert graph_stats.counts["Document"] == 240 and graph_stats.counts["Entity"] > 100
    gnn = run.steps["train_graph_embeddings"].outputs["gnn_metrics"][0].load()
    assert gnn["trained"] == 1.0 and gnn["link_auc"] > gnn["random_auc"]
    linked = Client().get_model_version("slipway-e2e", run.model_version.name)
    assert linked.run_metadata["mlflow_model"]["version"] == out["version"]
    return out


def test_pipeline_registered_a_champion_and_tracked_it(registered: dict[str, str]) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=registered["tracking_uri"], registry_uri=registered["tracking_uri"])
    mv = client.get_model_version_by_alias("slipway-e2e", "champion")
    assert str(mv.version) == registered["version"]
    run = client.get_run(mv.run_id)
    assert run.data.params["embedder_quantization"] == "auto"
    assert "embedder_min_cosine" in run.data.metrics and "gen_speedup" in run.data.metrics
    files = {f.path for f in client.list_artifacts(mv.run_id, "reports")}
    assert {"reports/parity_report.html", "reports/latency.png"} <= files


def test_index_refresh_pipeline_is_incremental_and_tracked(registered: dict[str, str],
                                                          tiny_embedder: Path,
                                                          tmp_path: Path) -> None:
    import json

    import mlflow
    from zenml.client import Client

    from pipelines.index_refresh import index_refresh
    from slipway.retrieval.stores import index_dir

    index = index_dir("e2e")
    assert index.published() == "v000001"  # published by the main job
    rows = [json.loads(line) for line in (XQUAD / "corpus.jsonl").open()]
    rows[0]["text"] += " An added sentence."
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(r) + "\n" for r in rows[1:2] + rows[0:1] + rows[3:]))
    params = {"index_name": "e2e", "model_name": "slipway-e2e", "eval_dir": str(XQUAD),
              "margin": 0.05}
    refresh = index_refresh.with_options(enable_cache=True)
    with pytest.raises(RuntimeError, match="refresh_index_version"):
        refresh(corpus=str(corpus), index=params, chunk_tokens=48, overlap_tokens=8)  # MiniLM cuts
    assert index.published() == "v000001"
    tiny = {"embedder_path": str(tiny_embedder), "chunk_tokens": 48, "overlap_tokens": 8}
    run = Client().get_pipeline_run(refresh(corpus=str(corpus), index=params, **tiny).id)
    stats = run.steps["refresh_index_version"].outputs["index_version"][0].load().stats
    assert (stats.changed_docs, stats.removed_docs, stats.new_docs) == (1, 1, 0)
    assert stats.embedded <= 3 and index.published() == "v000002"
    metrics = run.steps["evaluate_index_version"].outputs["retrieval_metrics"][0].load()
    assert set(metrics) == {"dense", "sparse", "hybrid"}

    again = Client().get_pipeline_run(refresh(corpus=str(corpus), index=params, **tiny).id)
    assert again.steps["preprocess_documents"].status == "cached"
    assert not again.steps["refresh_index_version"].outputs["index_version"][0].load().changed
    assert index.published() == "v000002"

    mlflow.set_tracking_uri(Client().active_stack.experiment_tracker.get_tracking_uri())
    runs = mlflow.search_runs(experiment_names=["index_refresh"])
    assert runs["metrics.hybrid_ndcg_at_10"].notna().any()
    assert runs["metrics.index_embedded"].notna().any()


def test_kg_update_pipeline_is_incremental_shares_chunk_ids_and_is_tracked(
        registered: dict[str, str], tiny_embedder: Path, tmp_path: Path) -> None:
    import json

    import mlflow
    from zenml.client import Client

    from pipelines.kg_update import kg_update
    from slipway.graph import connect
    from slipway.retrieval.index import open_published
    from slipway.retrieval.stores import index_dir, vector_store

    rows = [json.loads(line) for line in (XQUAD / "corpus.jsonl").open()]
    rows[0]["text"] += " Angela Merkel met Barack Obama in Berlin."
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(r) + "\n" for r in rows[1:2] + rows[0:1] + rows[3:]))
    params = {"corpus": str(corpus), "embedder_path": str(tiny_embedder), "chunk_tokens": 48,
              "overlap_tokens": 8,
              "kg": {"model_name": "slipway-e2e", "gnn": {"epochs": 40, "hidden": 64, "out": 32}}}
    update = kg_update.with_options(enable_cache=True)
    run = Client().get_pipeline_run(update(**params).id)
    stats = run.steps["update_knowledge_graph"].outputs["graph_stats"][0].load()
    assert (stats.new, stats.changed, stats.removed) == (0, 1, 1)  # the main job built the rest
    gnn = run.steps["train_graph_embeddings"].outputs["gnn_metrics"][0].load()
    assert gnn["trained"] == 1.0 and gnn["link_auc"] > gnn["random_auc"]
    with connect() as graph:
        assert graph.entity("PERSON:angela merkel") is not None
        graph_chunks = {r["id"] for r in graph.read("MATCH (c:Chunk) RETURN c.id AS id")}
    index = index_dir("e2e")  # refreshed by the index test above (its own edit of doc 0)
    indexed = open_published(index, vector_store(index)).dense.ids()
    edited = rows[0]["_id"] + "#"
    assert {c for c in graph_chunks if not c.startswith(edited)} == {
        c for c in indexed if not c.startswith(edited)}

    again = Client().get_pipeline_run(update(**params).id)
    assert again.steps["preprocess_documents"].status == "cached"
    stats = again.steps["update_knowledge_graph"].outputs["graph_stats"][0].load()
    assert stats.unchanged == len(rows) - 1 and stats.chunks_processed == 0
    assert again.steps["train_graph_embeddings"].outputs["gnn_metrics"][0].load() == gnn

    mlflow.set_tracking_uri(Client().active_stack.experiment_tracker.get_tracking_uri())
    runs = mlflow.search_runs(experiment_names=["kg_update"])
    trained = runs[runs["metrics.link_auc"].notna()]
    assert len(trained) == 1 and runs["metrics.kg_changed"].notna().any()
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(trained.iloc[0].run_id, "gnn")}
    assert "gnn/loss_curve.png" in artifacts


def test_bundle_artifact_round_trips_through_the_materializer(zenml_stack: str, tmp_path: Path) -> None:
    from zenml.client import Client

    from materializers.onnx_bundle import OnnxBundleMaterializer
    from slipway.onnx.bundle import OnnxBundle

    src = OnnxBundle.create(tmp_path / "b")
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "model.onnx").write_bytes(b"\x08\x01")
    src.add_model("embedder", tmp_path / "m", {"precision": "int8"})
    src.record("parity", {"embedder": {"passed": True, "min_cosine": 0.999}})
    store = Client().active_stack.artifact_store
    uri = os.path.join(store.path, "tests", "bundle-roundtrip")
    materializer = OnnxBundleMaterializer(uri)
    materializer.save(src)
    visuals = materializer.save_visualizations(src)
    assert any(p.endswith("parity.html") for p in visuals)
    assert materializer.extract_metadata(src)["embedder_parity_passed"] is True
    loaded = materializer.load(OnnxBundle)
    assert loaded.manifest == src.manifest
    assert (loaded.role_dir("embedder") / "model.onnx").read_bytes() == b"\x08\x01"
    assert materializer.compute_content_hash(loaded) == materializer.compute_content_hash(src)


@pytest.fixture(scope="module")
def server(registered: dict[str, str]) -> Iterator[str]:
    """`slipway serve` on the registered champion, as a user would start it."""
    port = _free_port()
    env = {**os.environ, "SLIPWAY_REGISTERED_MODEL_NAME": "slipway-e2e", "SLIPWAY_THREADS": "1",
           "SLIPWAY_MAX_TEXTS": "8", "SLIPWAY_MAX_CHARS": "500", "SLIPWAY_MAX_NEW_TOKENS": "32"}
    log = open(Path(os.environ["SLIPWAY_HOME"]).parent / "serve.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "slipway.cli", "serve", "--port", str(port),
         "--tracking-uri", registered["tracking_uri"]],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"server exited with {proc.returncode}: {Path(log.name).read_text()[-3000:]}")
            try:
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(1)
        else:
            pytest.fail(f"server not ready in 180 s: {Path(log.name).read_text()[-3000:]}")
        yield base
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


def test_health_and_metrics(server: str) -> None:
    assert httpx.get(f"{server}/livez").status_code == 200
    assert httpx.get(f"{server}/readyz").status_code == 200
    httpx.post(f"{server}/v1/embed", json={"texts": ["warm"]}, timeout=30)
    metrics = httpx.get(f"{server}/metrics").text
    assert "bentoml_service_request_total" in metrics or "request_total" in metrics


def test_embed(server: str) -> None:
    r = httpx.post(f"{server}/v1/embed", json={"texts": ["hello world", "paris is a city"]}, timeout=30)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["dimension"] == 64 and len(body["embeddings"]) == 2
    norms = [sum(x * x for x in v) ** 0.5 for v in body["embeddings"]]
    assert all(abs(n - 1.0) < 1e-3 for n in norms)


def test_concurrent_embeds_are_batched_correctly(server: str) -> None:
    import concurrent.futures as cf

    texts = [f"text number {i}" for i in range(12)]
    single = {t: httpx.post(f"{server}/v1/embed", json={"texts": [t]}, timeout=30).json()["embeddings"][0]
              for t in texts[:3]}
    with cf.ThreadPoolExecutor(6) as pool:
        results = list(pool.map(
            lambda t: httpx.post(f"{server}/v1/embed", json={"texts": [t]}, timeout=60), texts))
    assert all(r.status_code == 200 for r in results)
    for t, r in zip(texts[:3], results[:3], strict=True):
        got = r.json()["embeddings"][0]
        assert max(abs(a - b) for a, b in zip(got, single[t], strict=True)) < 1e-4


def test_generate_greedy_is_deterministic(server: str) -> None:
    req = {"prompt": "what is the capital of france", "max_new_tokens": 8, "temperature": 0}
    a = httpx.post(f"{server}/v1/generate", json=req, timeout=60)
    b = httpx.post(f"{server}/v1/generate", json=req, timeout=60)
    assert a.status_code == 200, a.text
    assert a.json()["text"] == b.json()["text"]
    usage = a.json()["usage"]
    assert 0 < usage["completion_tokens"] <= 8 and usage["prompt_tokens"] > 0


def test_models_reports_versions_and_provider(server: str, registered: dict[str, str]) -> None:
    body = httpx.get(f"{server}/v1/models", timeout=30).json()
    assert body["version"] == registered["version"]
    assert body["models"]["embedder"]["provider"] == "CPUExecutionProvider"
    assert body["models"]["generator"]["precision"] == "int8"


@pytest.mark.parametrize(
    ("path", "payload", "field"),
    [
        ("/v1/embed", {"texts": []}, "texts"),
        ("/v1/embed", {"texts": [""]}, "texts"),
        ("/v1/embed", {"texts": ["   "]}, "texts"),
        ("/v1/generate", {"prompt": " \n "}, "prompt"),
        ("/v1/embed", {"texts": ["x" * 501]}, "texts"),
        ("/v1/embed", {"texts": ["a"] * 9}, "texts"),
        ("/v1/embed", {"texts": "not a list"}, "texts"),
        ("/v1/embed", {}, "texts"),
        ("/v1/generate", {"prompt": "hi", "max_new_tokens": 33}, "max_new_tokens"),
        ("/v1/generate", {"prompt": "hi", "max_new_tokens": "many"}, "max_new_tokens"),
        ("/v1/generate", {"prompt": "hi", "temperature": -1}, "temperature"),
        ("/v1/generate", {"prompt": ""}, "prompt"),
    ],
)
def test_bad_input_gets_a_4xx_naming_the_field(server: str, path: str, payload: dict, field: str) -> None:
    r = httpx.post(f"{server}{path}", json=payload, timeout=30)
    assert 400 <= r.status_code < 500, (r.status_code, r.text)
    assert field.split("[")[0] in r.text


def test_malformed_json_is_a_4xx(server: str) -> None:
    r = httpx.post(f"{server}/v1/embed", content=b"{not json", timeout=30,
                   headers={"content-type": "application/json"})
    assert 400 <= r.status_code < 500, (r.status_code, r.text)
