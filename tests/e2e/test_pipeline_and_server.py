"""Tier 3: a real main-job run (tiny models) in a temporary ZenML/MLflow home: what it
registered, published and tracked, and the index and graph pipelines run again on top of it.
The service on that model is tested in ``test_api_server.py``."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.e2e.conftest import XQUAD, Server, acl_rows


def test_pipeline_registered_a_champion_and_tracked_it(registered: dict[str, str]) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(
        tracking_uri=registered["tracking_uri"], registry_uri=registered["tracking_uri"]
    )
    mv = client.get_model_version_by_alias("slipway-e2e", "champion")
    assert str(mv.version) == registered["version"]
    run = client.get_run(mv.run_id)
    assert run.data.params["embedder_quantization"] == "auto"
    assert "embedder_min_cosine" in run.data.metrics and "gen_speedup" in run.data.metrics
    files = {f.path for f in client.list_artifacts(mv.run_id, "reports")}
    assert {"reports/parity_report.html", "reports/latency.png"} <= files


def test_index_refresh_pipeline_is_incremental_and_tracked(
    registered: dict[str, str], tiny_embedder: Path, tmp_path: Path, server: Server
) -> None:
    import json
    import time

    import httpx
    import mlflow
    from zenml.client import Client

    from pipelines.index_refresh import index_refresh
    from slipway.graph.snapshot import INFO_FILE, SnapshotInfo, snapshot_dir
    from slipway.retrieval.stores import index_dir

    index = index_dir("e2e")
    assert index.published() == "v000001"  # published by the main job
    rows = acl_rows()  # the main job's corpus
    rows[0]["text"] += " An added sentence."
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(r) + "\n" for r in rows[1:2] + rows[0:1] + rows[3:]))
    params = {
        "index_name": "e2e",
        "model_name": "slipway-e2e",
        "eval_dir": str(XQUAD),
        "margin": 0.05,
    }
    refresh = index_refresh.with_options(enable_cache=True)
    with pytest.raises(RuntimeError, match="refresh_index_version"):
        refresh(corpus=str(corpus), index=params, chunk_tokens=48, overlap_tokens=8)  # MiniLM cuts
    assert index.published() == "v000001"
    tiny = {"embedder_path": str(tiny_embedder), "chunk_tokens": 48, "overlap_tokens": 8}
    run = Client().get_pipeline_run(refresh(corpus=str(corpus), index=params, **tiny).id)
    stats = run.steps["refresh_index_version"].outputs["index_version"][0].load().stats
    assert (stats.changed_docs, stats.removed_docs, stats.new_docs) == (1, 1, 0)
    assert stats.embedded <= 3 and index.published() == "v000002"
    # the running service picks the new version up without a restart, and its search cache
    # (keyed by index version) never answers from v000001 again
    deadline, seen = time.monotonic() + 30, None
    while time.monotonic() < deadline and seen != "v000002":
        seen = httpx.post(
            f"{server.base}/v1/search",
            json={"query": rows[0]["text"][:80]},
            headers=server.headers(),
            timeout=60,
        ).json()["index_version"]
        time.sleep(1)
    assert seen == "v000002"
    metrics = run.steps["evaluate_index_version"].outputs["retrieval_metrics"][0].load()
    assert {"dense", "sparse", "hybrid", "graph", "hybrid+graph"} <= set(metrics)
    # the graph snapshot, like the vectors: only the changed document went through NER
    snapshot = SnapshotInfo.model_validate_json(
        (snapshot_dir(index.version_dir("v000002")) / INFO_FILE).read_text()
    )
    changed = index.manifest("v000002").documents[rows[0]["_id"]]
    assert snapshot.extracted == len(changed.chunks) < snapshot.carried
    assert snapshot.chunks == snapshot.extracted + snapshot.carried
    assert index.manifest("v000002").graph is not None

    again = Client().get_pipeline_run(refresh(corpus=str(corpus), index=params, **tiny).id)
    assert again.steps["preprocess_documents"].status == "cached"
    assert not again.steps["refresh_index_version"].outputs["index_version"][0].load().changed
    assert index.published() == "v000002"

    mlflow.set_tracking_uri(Client().active_stack.experiment_tracker.get_tracking_uri())
    runs = mlflow.search_runs(experiment_names=["index_refresh"])
    assert runs["metrics.hybrid_ndcg_at_10"].notna().any()
    assert runs["metrics.index_embedded"].notna().any()


def test_kg_update_pipeline_is_incremental_shares_chunk_ids_and_is_tracked(
    registered: dict[str, str], tiny_embedder: Path, tmp_path: Path
) -> None:
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
    params = {
        "corpus": str(corpus),
        "embedder_path": str(tiny_embedder),
        "chunk_tokens": 48,
        "overlap_tokens": 8,
        "kg": {"model_name": "slipway-e2e", "gnn": {"epochs": 40, "hidden": 64, "out": 32}},
    }
    update = kg_update.with_options(enable_cache=True)
    # other tests of the session (the kill test) leave their own chunkings in the graph: bring
    # it back to the main job's corpus first, so the edit below is the only change
    kg_update.with_options(enable_cache=False)(**{**params, "corpus": str(XQUAD)})
    mlflow.set_tracking_uri(Client().active_stack.experiment_tracker.get_tracking_uri())
    runs_before = len(mlflow.search_runs(experiment_names=["kg_update"]))
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
        c for c in indexed if not c.startswith(edited)
    }

    again = Client().get_pipeline_run(update(**params).id)
    assert again.steps["preprocess_documents"].status == "cached"
    stats = again.steps["update_knowledge_graph"].outputs["graph_stats"][0].load()
    assert stats.unchanged == len(rows) - 1 and stats.chunks_processed == 0
    assert again.steps["train_graph_embeddings"].outputs["gnn_metrics"][0].load() == gnn

    mlflow.set_tracking_uri(Client().active_stack.experiment_tracker.get_tracking_uri())
    runs = mlflow.search_runs(experiment_names=["kg_update"])
    runs = runs.sort_values("start_time").iloc[runs_before:]  # this test's two runs
    trained = runs[runs["metrics.link_auc"].notna()]
    assert len(trained) == 1 and runs["metrics.kg_changed"].notna().any()
    artifacts = {
        a.path for a in mlflow.MlflowClient().list_artifacts(trained.iloc[0].run_id, "gnn")
    }
    assert "gnn/loss_curve.png" in artifacts


def test_bundle_artifact_round_trips_through_the_materializer(
    zenml_stack: str, tmp_path: Path
) -> None:
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


def test_bento_build_packages_the_champion_and_the_run_stored_its_bento(
    registered: dict[str, str],
) -> None:
    import subprocess
    import sys

    import bentoml
    from zenml.client import Client

    env = {**os.environ, "SLIPWAY_REGISTERED_MODEL_NAME": "slipway-e2e"}
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "slipway.cli",
            "bento",
            "build",
            "--tracking-uri",
            registered["tracking_uri"],
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        check=False,
    )
    assert built.returncode == 0, built.stderr
    tag = built.stdout.strip()
    assert tag.startswith(f"slipway:v{registered['version']}-")
    assert bentoml.get(tag).info.labels["model_version"] == registered["version"]
    missing = subprocess.run(
        [
            sys.executable,
            "-m",
            "slipway.cli",
            "bento",
            "build",
            "--model-version",
            "999",
            "--tracking-uri",
            registered["tracking_uri"],
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        check=False,
    )
    assert missing.returncode == 1 and "has no version 999" in missing.stderr
    # the main job's bento is an artifact too: what CI/CD containerizes after a cluster run
    stored = Client().get_artifact_version("bento").load()
    assert str(stored.tag).startswith(f"slipway:v{registered['version']}-")
