"""Steps: refresh the index (write a new version), evaluate it, publish it behind the gate."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import mlflow
from zenml import step

from slipway.config import get_settings
from slipway.documents import DocumentSet
from slipway.documents.chunking import ChunkSet
from slipway.embedding import OnnxEmbedder, model_fingerprint
from slipway.embedding.cache import EmbeddingCache
from slipway.onnx.bundle import MANIFEST as BUNDLE_MANIFEST
from slipway.onnx.bundle import OnnxBundle
from slipway.retrieval.evaluation import (
    JudgedQueries,
    evaluate_searcher,
    flat_metrics,
    publish_gated,
    record_metrics,
)
from slipway.retrieval.hybrid import HybridSearcher, load_fusion
from slipway.retrieval.index import (
    IndexVersion,
    OpenIndex,
    check_chunk_tokenizer,
    document_hashes,
    refresh_index,
)
from slipway.retrieval.rerank import configured_reranker
from slipway.retrieval.stores import index_dir, vector_store
from steps.common import champion_embedder, index_settings

Metrics = dict[str, dict[str, float]]


def _log(metrics: dict[str, float]) -> None:
    if mlflow.active_run() is not None:
        mlflow.log_metrics(metrics)


@step(enable_cache=False, experiment_tracker=True)
def refresh_index_version(
    documents: DocumentSet,
    chunks: ChunkSet,
    index_name: str = "default",
    model_name: str = "slipway",
    model_version: str | None = None,
    bundle_dir: str | None = None,
    write_batch: int = 512,
) -> Annotated[IndexVersion, "index_version"]:
    """Embed new and changed chunks with the registry's champion embedder into a new version."""
    source = champion_embedder(model_name, model_version, bundle_dir)
    embedder_dir = source.dir
    embedder = OnnxEmbedder(embedder_dir, threads=get_settings().threads)
    check_chunk_tokenizer(chunks.chunks, embedder.tokenizer, embedder.pooling.max_length - 2)
    settings = index_settings()
    index = index_dir(index_name, settings)
    cache = EmbeddingCache(get_settings().cache_dir / "embeddings.sqlite")
    try:
        version = refresh_index(
            index,
            vector_store(index, settings),
            chunks.chunks,
            document_hashes(documents.documents),
            embedder,
            model_fingerprint(embedder_dir),
            cache,
            embedder_label=source.label,
            model=(source.model_name, source.model_version),
            embedder_dir=str(embedder_dir),
            write_batch=write_batch,
            store_name=settings.vector_store,
        )
    finally:
        cache.close()
    stats = version.stats
    _log({f"index_{k}": float(v) for k, v in stats.model_dump().items() if k != "reason"})
    return version


@step(enable_cache=False, experiment_tracker=True)
def evaluate_index_version(
    index_version: IndexVersion, eval_dir: str | None = None, split: str = "test"
) -> Annotated[Metrics, "retrieval_metrics"]:
    """nDCG@10 and Recall@10/100 of dense, sparse and hybrid search, logged to MLflow."""
    settings = index_settings()
    index = index_dir(index_version.name, settings)
    if not index_version.changed:
        return index.manifest(index_version.version).metrics
    if not eval_dir:
        return {}
    opened = OpenIndex(index, index_version.version, vector_store(index, settings))
    embedder_dir = Path(index_version.embedder_dir)
    bundle = (
        OnnxBundle.load(embedder_dir.parent)
        if (embedder_dir.parent / BUNDLE_MANIFEST).is_file()
        else None
    )
    searcher = HybridSearcher(  # searched as served: the bundle's fusion and re-ranker
        OnnxEmbedder(embedder_dir),
        opened.dense,
        opened.sparse,
        load_fusion(bundle.root) if bundle else None,
        configured_reranker(settings.reranker_path, bundle),
        text_of=opened.text_of,
    )
    metrics = evaluate_searcher(
        searcher, JudgedQueries.from_beir(Path(eval_dir), split), opened.doc_of
    )
    record_metrics(index, index_version.version, metrics)
    _log(flat_metrics(metrics))
    return metrics


@step(enable_cache=False)
def publish_index_version(
    index_version: IndexVersion,
    retrieval_metrics: Metrics,
    margin: float | None = None,
    retain: int | None = None,
) -> Annotated[str, "published_index_version"]:
    """Move the published pointer to the new version if it passes the quality gate."""
    settings = index_settings()
    index = index_dir(index_version.name, settings)
    return publish_gated(
        index,
        vector_store(index, settings),
        index_version.version,
        settings.quality_margin if margin is None else margin,
        settings.index_retain if retain is None else retain,
    )
