"""Steps: bring the knowledge graph up to date; train and store graph embeddings."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated, Any

import mlflow
from zenml import step

from slipway.config import GraphSettings, get_settings
from slipway.documents import DocumentSet
from slipway.documents.chunking import ChunkSet
from slipway.embedding import OnnxEmbedder
from slipway.graph import connect
from slipway.graph.extraction import load_nlp
from slipway.graph.gnn import MIN_EDGES, GnnConfig, log_to_mlflow, train_link_predictor
from slipway.graph.update import GraphStats, update_graph
from slipway.graph.vectors import EntityVectors
from slipway.secrets import NEO4J, with_secret
from steps.common import champion_embedder_dir, zenml_secret

logger = logging.getLogger(__name__)


def graph_settings() -> GraphSettings:
    """The graph settings, with the server's credentials taken from the ZenML secret named in
    ``SLIPWAY_NEO4J_SECRET`` when set (keys: uri, user, password, database)."""
    settings = GraphSettings()
    return with_secret(settings, settings.neo4j_secret, NEO4J, zenml_secret)


def entity_vectors_dir() -> Path:
    """Where the entity vector table lives."""
    return get_settings().home / "entity_vectors"


@step(enable_cache=False, experiment_tracker=True)
def update_knowledge_graph(
    documents: DocumentSet,
    chunks: ChunkSet,
    model_name: str = "slipway",
    model_version: str | None = None,
    bundle_dir: str | None = None,
    batch_docs: int = 200,
    ner_batch: int = 64,
    max_pair_entities: int = 40,
    context_disambiguation: bool = True,
) -> Annotated[GraphStats, "graph_stats"]:
    """Extract and link the entities of new and changed documents into the graph; detach
    removed ones. Ambiguous names are told apart by the champion embedder's context vectors."""
    settings = graph_settings()
    embed = None
    if context_disambiguation:
        embedder_dir, _ = champion_embedder_dir(model_name, model_version, bundle_dir)
        embed = OnnxEmbedder(embedder_dir, threads=get_settings().threads).embed
    nlp = load_nlp(settings.ner_model)
    with connect(settings) as graph:
        stats = update_graph(
            graph,
            documents.documents,
            chunks.chunks,
            nlp,
            embed,
            batch_docs=batch_docs,
            ner_batch=ner_batch,
            max_pair_entities=max_pair_entities,
        )
    logger.info("knowledge graph: %s", stats.counts)
    if mlflow.active_run() is not None:
        mlflow.log_metrics(
            {
                f"kg_{k}": float(v)
                for k, v in stats.model_dump().items()
                if isinstance(v, int | float)
            }
        )
        mlflow.log_metrics({f"kg_nodes_{k}": float(v) for k, v in stats.counts.items()})
    return stats


@step(enable_cache=False, experiment_tracker=True)
def train_graph_embeddings(
    graph_stats: GraphStats,
    model_name: str = "slipway",
    model_version: str | None = None,
    bundle_dir: str | None = None,
    gnn: dict[str, Any] | None = None,
) -> Annotated[dict[str, float], "gnn_metrics"]:
    """Train the GNN on the entity co-occurrence graph (features: the champion embedder's
    entity-name vectors), log it to MLflow, and store the embeddings in the graph and the
    entity vector table. Skipped (with the previous metrics) when the graph did not change."""
    out = entity_vectors_dir()
    last = out / "metrics.json"
    unchanged = not (graph_stats.new or graph_stats.changed or graph_stats.removed)
    if unchanged and last.is_file():
        logger.info("graph unchanged: keeping the entity embeddings of the last run")
        return json.loads(last.read_text())
    config = GnnConfig(**(gnn or {}))
    with connect(graph_settings()) as graph:
        ids, names, edges, weights = graph.entity_graph()
        if len(edges) < MIN_EDGES:
            logger.warning(
                "the entity graph has %d co-occurrence edges (< %d): no graph "
                "embeddings trained; add documents for link prediction",
                len(edges),
                MIN_EDGES,
            )
            return {"edges": float(len(edges)), "trained": 0.0}
        embedder_dir, _ = champion_embedder_dir(model_name, model_version, bundle_dir)
        features = OnnxEmbedder(embedder_dir, threads=get_settings().threads).embed(names)
        result = train_link_predictor(features, edges, weights, config)
        graph.set_embeddings(ids, result.embeddings)
    EntityVectors(out).replace(ids, names, result.embeddings)
    log_to_mlflow(result)
    beats = result.test_auc > max(result.cosine_auc, result.random_auc + 0.05)
    metrics = {**result.metrics(), "trained": 1.0, "beats_baselines": float(beats)}
    if mlflow.active_run() is not None:
        mlflow.log_metric("gnn_beats_baselines", float(beats))
    last.write_text(json.dumps(metrics))
    logger.info(
        "graph embeddings: link AUC %.3f (name-cosine %.3f, random %.3f)",
        result.test_auc,
        result.cosine_auc,
        result.random_auc,
    )
    if not beats:
        logger.warning(
            "the GNN's held-out link AUC %.3f does not beat name-embedding cosine "
            "(%.3f) and random (%.3f) by a clear margin on this graph: its "
            "embeddings add little here (try more epochs, model=gcn, or more "
            "documents)",
            result.test_auc,
            result.cosine_auc,
            result.random_auc,
        )
    return metrics
