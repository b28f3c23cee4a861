"""Tier 2: the graph steps through ``.entrypoint()``: update from a ZenML secret's credentials,
clear errors for bad secrets, and GNN training with embeddings written back."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from slipway.graph import connect
from slipway.graph.vectors import EntityVectors
from slipway.onnx.bundle import OnnxBundle
from steps.documents import chunk_corpus, preprocess_documents
from steps.graph import (
    entity_vectors_dir,
    graph_settings,
    train_graph_embeddings,
    update_knowledge_graph,
)

TEXTS = [
    "Kenneth Lay met Jeff Skilling in Houston. Lay said Enron would grow.",
    "Jeff Skilling flew to London with Andrew Fastow. The Enron board met in Houston.",
    "Vince Kaminski wrote to Jeff Skilling about Enron risk models in Houston.",
    "Andrew Fastow met bankers from Merrill Lynch in New York and London.",
    "Sherron Watkins wrote to Kenneth Lay in Houston about Andrew Fastow.",
    "Merrill Lynch and Enron traded power in California with Jeff Skilling.",
]


@pytest.fixture(scope="module")
def bundle(tiny_onnx_embedder: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    made = OnnxBundle.create(tmp_path_factory.mktemp("bundle") / "b")
    made.add_model("embedder", tiny_onnx_embedder, {"config": {"runtime": "ort"}})
    return str(made.root)


@pytest.fixture
def corpus(tmp_path: Path, tiny_embedder: Path):  # type: ignore[no-untyped-def]
    path = tmp_path / "corpus.jsonl"
    path.write_text(
        "".join(json.dumps({"_id": f"d{i}", "text": t}) + "\n" for i, t in enumerate(TEXTS))
    )
    docs = preprocess_documents.entrypoint(corpus=str(path), min_chars=5)
    return docs, chunk_corpus.entrypoint(
        docs, chunk_tokens=64, overlap_tokens=4, embedder_path=str(tiny_embedder)
    )


def _secret(values: dict[str, str]) -> str:
    from zenml.client import Client

    name = f"kg-{uuid.uuid4().hex[:8]}"
    Client().create_secret(name, values=values)
    return name


def test_update_reads_the_server_from_a_zenml_secret(
    zenml_stack: str,
    graph_server,
    corpus,  # type: ignore[no-untyped-def]
    bundle: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    name = _secret(
        {
            "uri": graph_server.uri,
            "user": graph_server.user,
            "password": graph_server.password,
            "database": graph_server.database,
        }
    )
    monkeypatch.setenv("SLIPWAY_NEO4J_SECRET", name)
    settings = graph_settings()
    assert settings.neo4j_uri == graph_server.uri and settings.neo4j_database == "kg"
    with connect(settings) as graph:
        graph.clear()
    stats = update_knowledge_graph.entrypoint(*corpus, bundle_dir=bundle)
    assert stats.new == len(TEXTS) and stats.counts["Entity"] >= 8
    again = update_knowledge_graph.entrypoint(*corpus, bundle_dir=bundle)
    assert again.unchanged == len(TEXTS) and again.chunks_processed == 0


def test_bad_secrets_name_what_to_fix(
    zenml_stack: str,
    graph_server,
    corpus,  # type: ignore[no-untyped-def]
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SLIPWAY_NEO4J_SECRET", "no-such-secret")
    with pytest.raises(RuntimeError, match="SLIPWAY_NEO4J_SECRET"):
        graph_settings()
    monkeypatch.setenv("SLIPWAY_NEO4J_SECRET", _secret({"uri": graph_server.uri}))
    with pytest.raises(RuntimeError, match="uri and password"):
        graph_settings()
    monkeypatch.setenv(
        "SLIPWAY_NEO4J_SECRET",
        _secret({"uri": graph_server.uri, "user": "root", "password": "wrong-password"}),
    )
    with pytest.raises(RuntimeError, match="SLIPWAY_NEO4J_PASSWORD"):
        update_knowledge_graph.entrypoint(*corpus, context_disambiguation=False)
    monkeypatch.delenv("SLIPWAY_NEO4J_SECRET")
    monkeypatch.setenv("SLIPWAY_NEO4J_URI", "http://localhost:7474")
    with pytest.raises(ValueError, match="SLIPWAY_NEO4J_URI must start with"):
        graph_settings()


def test_train_writes_embeddings_to_the_graph_and_the_vector_table(
    zenml_stack: str,  # type: ignore[no-untyped-def]
    graph_server,
    corpus,
    bundle: str,
) -> None:
    with connect() as graph:
        graph.clear()
    stats = update_knowledge_graph.entrypoint(*corpus, bundle_dir=bundle)
    metrics = train_graph_embeddings.entrypoint(
        stats, bundle_dir=bundle, gnn={"epochs": 30, "hidden": 32, "out": 16}
    )
    assert metrics["trained"] == 1.0 and 0.0 <= metrics["link_auc"] <= 1.0
    with connect() as graph:
        rows = graph.read("MATCH (e:Entity) RETURN e.id AS id, size(e.embedding) AS n")
    assert rows and all(r["n"] == 16 for r in rows)
    vectors = EntityVectors(entity_vectors_dir())
    similar = vectors.similar("PERSON:jeff skilling", k=3)
    assert len(similar) == 3 and all(hit[0] != "PERSON:jeff skilling" for hit in similar)
    # an unchanged graph keeps the last embeddings
    unchanged = stats.model_copy(update={"new": 0, "changed": 0, "removed": 0})
    assert train_graph_embeddings.entrypoint(unchanged, bundle_dir=bundle) == metrics
