"""Tier 2: the index steps through ``.entrypoint()``: refresh, evaluate, publish (and refuse)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from slipway.graph.snapshot import has_snapshot
from slipway.onnx.bundle import OnnxBundle
from slipway.retrieval.evaluation import (
    GRAPH_FUSIONS,
    QualityGateError,
    graph_variant,
    record_metrics,
)
from slipway.retrieval.stores import index_dir
from steps.documents import chunk_corpus, preprocess_documents
from steps.index import (
    build_graph_snapshot,
    evaluate_index_version,
    publish_index_version,
    refresh_index_version,
)
from tests.tiny_models import CORPUS

TEXTS = sorted(set(CORPUS))


@pytest.fixture(scope="module")
def bundle(tiny_onnx_embedder: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A bundle holding only the tiny ONNX embedder."""
    made = OnnxBundle.create(tmp_path_factory.mktemp("bundle") / "b")
    made.add_model("embedder", tiny_onnx_embedder, {"config": {"runtime": "ort"}})
    return str(made.root)


def beir(root: Path, texts: list[str]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "corpus.jsonl").write_text(
        "".join(
            json.dumps({"_id": f"d{i}", "title": "", "text": t}) + "\n" for i, t in enumerate(texts)
        )
    )
    (root / "queries.jsonl").write_text(
        json.dumps({"_id": "q1", "text": "capital of france"})
        + "\n"
        + json.dumps({"_id": "q2", "text": "onnx runtime on cpus"})
        + "\n"
    )
    (root / "qrels").mkdir(exist_ok=True)
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td5\t1\nq2\td1\t1\n")
    return root


def test_refresh_evaluate_publish(bundle: str, tiny_embedder: Path, tmp_path: Path) -> None:
    root = beir(tmp_path / "set", TEXTS)
    docs = preprocess_documents.entrypoint(corpus=str(root), min_chars=5)
    chunks = chunk_corpus.entrypoint(
        docs, chunk_tokens=16, overlap_tokens=2, embedder_path=str(tiny_embedder)
    )
    version = refresh_index_version.entrypoint(docs, chunks, index_name="steps", bundle_dir=bundle)
    assert version.changed and version.stats.documents == len(TEXTS)
    assert build_graph_snapshot.entrypoint(version, chunks) == version
    index = index_dir("steps")
    assert has_snapshot(index.version_dir(version.version))
    metrics = evaluate_index_version.entrypoint(version, eval_dir=str(root))
    grid = {graph_variant(w, k) for w, k in GRAPH_FUSIONS}
    assert {"dense", "sparse", "hybrid", "graph", "hybrid+graph"} | grid == set(metrics)
    assert metrics["sparse"]["recall@10"] == 1.0  # two easy keyword queries
    assert publish_index_version.entrypoint(version, metrics) == version.version
    assert index.published() == version.version
    manifest = index.manifest(version.version)
    assert manifest.metrics == metrics
    # the gate's decision, from the figures it recorded
    assert manifest.graph is not None and manifest.graph.hybrid == metrics["hybrid"]["ndcg@10"]
    best = max(grid, key=lambda name: (metrics[name]["ndcg@10"], name))
    assert graph_variant(manifest.graph.weight, manifest.graph.rrf_k) == best
    served = metrics["hybrid+graph"]["ndcg@10"]
    assert manifest.graph.hybrid_graph == served == metrics[best]["ndcg@10"]
    assert manifest.graph.enabled == (served >= metrics["hybrid"]["ndcg@10"] + 0.005)

    # a worse candidate is refused and the published version keeps serving
    fewer = preprocess_documents.entrypoint(
        corpus=str(beir(tmp_path / "less", TEXTS[:-1])), min_chars=5
    )
    fewer_chunks = chunk_corpus.entrypoint(
        fewer, chunk_tokens=16, overlap_tokens=2, embedder_path=str(tiny_embedder)
    )
    candidate = refresh_index_version.entrypoint(
        fewer, fewer_chunks, index_name="steps", bundle_dir=bundle
    )
    assert candidate.stats.removed_docs == 1 and candidate.stats.embedded == 0
    # no snapshot asked for: the gate has nothing to compare and keeps the graph off
    build_graph_snapshot.entrypoint(candidate, fewer_chunks, enabled=False)
    assert not has_snapshot(index.version_dir(candidate.version))
    assert set(evaluate_index_version.entrypoint(candidate, eval_dir=str(root))) == {
        "dense",
        "sparse",
        "hybrid",
    }
    gate = index.manifest(candidate.version).graph
    assert gate is not None and not gate.enabled and "no evaluation" in gate.reason
    worse = {k: {**v, "ndcg@10": v["ndcg@10"] - 0.5} for k, v in metrics.items()}
    record_metrics(index, candidate.version, worse)
    with pytest.raises(QualityGateError, match="not published"):
        publish_index_version.entrypoint(candidate, worse)
    assert index.published() == version.version
    assert publish_index_version.entrypoint(candidate, worse, margin=1.0) == candidate.version
