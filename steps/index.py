"""Steps: refresh the index (write a new version), evaluate it, publish it behind the gate."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import mlflow
from zenml import step

from slipway.config import GraphSettings, get_settings
from slipway.documents import DocumentSet
from slipway.documents.chunking import ChunkSet
from slipway.embedding import OnnxEmbedder, model_fingerprint
from slipway.embedding.cache import EmbeddingCache
from slipway.graph.extraction import load_nlp
from slipway.graph.snapshot import GraphRetriever, build_snapshot, has_snapshot
from slipway.onnx.bundle import MANIFEST as BUNDLE_MANIFEST
from slipway.onnx.bundle import OnnxBundle
from slipway.retrieval.evaluation import (
    JudgedQueries,
    evaluate_searcher,
    flat_metrics,
    graph_gate,
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
logger = logging.getLogger(__name__)


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
def build_graph_snapshot(
    index_version: IndexVersion, chunks: ChunkSet, enabled: bool = True
) -> Annotated[IndexVersion, "graph_snapshot_version"]:
    """Write the version's entity-chunk graph snapshot (graph retrieval reads it): NER on the
    chunks of new and changed documents, the rest carried over from the base version. A
    version that already has one (nothing changed) is left alone; ``enabled=False`` writes
    none (graph retrieval then stays off for the version)."""
    index = index_dir(index_version.name, index_settings())
    directory = index.version_dir(index_version.version)
    if not enabled or has_snapshot(directory):
        return index_version
    manifest = index.manifest(index_version.version)
    fresh = {d for d, entry in manifest.documents.items() if entry.version == manifest.version}
    base = index.version_dir(manifest.base) if manifest.base else None
    info = build_snapshot(
        directory, chunks.chunks, load_nlp(GraphSettings().ner_model), fresh, base
    )
    _log({f"graph_snapshot_{k}": float(v) for k, v in info.model_dump().items() if k != "ner"})
    return index_version


@step(enable_cache=False, experiment_tracker=True)
def evaluate_index_version(
    index_version: IndexVersion, eval_dir: str | None = None, split: str = "test"
) -> Annotated[Metrics, "retrieval_metrics"]:
    """nDCG@10 and Recall@10/100 of dense, sparse and hybrid search (and, when the version
    has a graph snapshot, of graph retrieval and hybrid + graph at each weight the gate
    tries), logged to MLflow; the graph gate's decision is recorded in the manifest."""
    settings = index_settings()
    index = index_dir(index_version.name, settings)
    manifest = index.manifest(index_version.version)
    if not index_version.changed and (manifest.graph is not None or not eval_dir):
        return manifest.metrics
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
    directory = index.version_dir(index_version.version)
    graph = (
        GraphRetriever.load(directory, load_nlp(GraphSettings().ner_model)).search_many
        if has_snapshot(directory)
        else None
    )
    metrics = evaluate_searcher(
        searcher, JudgedQueries.from_beir(Path(eval_dir), split), opened.doc_of, graph=graph
    )
    gate = graph_gate(metrics, settings.graph_min_gain)
    logger.info("index %s %s graph retrieval %s", index.name, index_version.version, gate.reason)
    record_metrics(index, index_version.version, metrics, gate)
    _log({**flat_metrics(metrics), "graph_retrieval_on": float(gate.enabled)})
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
