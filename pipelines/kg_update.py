"""Knowledge-graph update: documents -> chunks -> entities linked into the graph -> GNN
embeddings."""

from __future__ import annotations

from typing import Any

from zenml import pipeline

from steps.documents import chunk_corpus, corpus_fingerprint, preprocess_documents
from steps.graph import train_graph_embeddings, update_knowledge_graph

EMBEDDER_KEYS = ("model_name", "model_version", "bundle_dir")


def update_and_embed(
    documents: Any, chunks: Any, kg: dict[str, Any] | None, after: str | None = None
) -> None:
    """Wire the two graph steps (shared by this pipeline and the main job)."""
    kg = dict(kg or {})
    gnn = kg.pop("gnn", None)
    embedder = {k: kg[k] for k in EMBEDDER_KEYS if k in kg}
    stats = update_knowledge_graph(documents, chunks, after=after, **kg)
    train_graph_embeddings(stats, gnn=gnn, **embedder)


@pipeline(enable_cache=True)
def kg_update(
    corpus: str | None = None,
    source_format: str = "auto",
    chunk_tokens: int = 200,
    overlap_tokens: int = 32,
    embedder_path: str | None = None,
    kg: dict[str, Any] | None = None,
) -> None:
    """Keep the knowledge graph of ``corpus`` up to date; ``kg`` holds the update parameters
    (model_name, model_version, bundle_dir, batch_docs, ner_batch, max_pair_entities,
    context_disambiguation) and ``gnn`` (model, hidden, out, epochs, lr, seed, ...). Chunks are
    the index's chunks (same ids), so ``chunk_tokens`` and ``embedder_path`` match the index."""
    documents = preprocess_documents(
        corpus=corpus, source_format=source_format, source_fingerprint=corpus_fingerprint(corpus)
    )
    chunks = chunk_corpus(
        documents,
        chunk_tokens=chunk_tokens,
        overlap_tokens=overlap_tokens,
        embedder_path=embedder_path,
    )
    update_and_embed(documents, chunks, kg)
