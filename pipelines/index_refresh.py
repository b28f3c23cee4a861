"""Index refresh: documents -> chunks -> new index version (incremental) -> evaluate -> publish."""

from __future__ import annotations

from typing import Any

from zenml import pipeline

from steps.documents import (
    chunk_corpus,
    corpus_fingerprint,
    evaluation_set,
    preprocess_documents,
)
from steps.index import (
    build_graph_snapshot,
    evaluate_index_version,
    publish_index_version,
    refresh_index_version,
)


def refresh_and_publish(
    documents: Any, chunks: Any, index: dict[str, Any] | None, after: str | None = None
) -> Any:
    """Wire the index steps (shared by this pipeline and the main job): refresh, graph
    snapshot (``graph: false`` writes none), evaluation and the gated publish; the retrieval
    metrics out."""
    index = dict(index or {})
    eval_dir = index.pop("eval_dir", None)
    graph = bool(index.pop("graph", True))
    publish = {k: index.pop(k) for k in ("margin", "retain") if k in index}
    version = refresh_index_version(documents, chunks, after=after, **index)
    version = build_graph_snapshot(version, chunks, enabled=graph)
    metrics = evaluate_index_version(version, eval_dir=eval_dir)
    publish_index_version(version, metrics, **publish)
    return metrics


@pipeline(enable_cache=True)
def index_refresh(
    corpus: str | None = None,
    source_format: str = "auto",
    chunk_tokens: int = 200,
    overlap_tokens: int = 32,
    embedder_path: str | None = None,
    index: dict[str, Any] | None = None,
) -> None:
    """Keep the published index of ``corpus`` up to date; ``index`` holds the refresh, graph
    snapshot, evaluation and publish parameters (index_name, model_name, model_version,
    bundle_dir, write_batch, graph, eval_dir, margin, retain); ``embedder_path`` is the model
    directory whose tokenizer cuts the chunks (default: the packaged embedder; it must be the
    registered embedder's source).
    ``index.eval_dir`` unset: the packaged judgements gate the packaged demo corpus, another
    corpus is published without a gate (logged), as in the main job."""
    index = dict(index or {})
    eval_dir = evaluation_set(corpus=corpus, eval_dir=index.pop("eval_dir", None))
    documents = preprocess_documents(
        corpus=corpus, source_format=source_format, source_fingerprint=corpus_fingerprint(corpus)
    )
    chunks = chunk_corpus(
        documents,
        chunk_tokens=chunk_tokens,
        overlap_tokens=overlap_tokens,
        embedder_path=embedder_path,
    )
    refresh_and_publish(documents, chunks, {**index, "eval_dir": eval_dir})
