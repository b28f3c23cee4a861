"""The retrieval quality gate: dense, sparse and hybrid scored on relevance judgements."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from itertools import chain
from pathlib import Path
from typing import Any

from slipway.retrieval.dense import VectorStore
from slipway.retrieval.fusion import Hit
from slipway.retrieval.hybrid import Expander, HybridSearcher
from slipway.retrieval.index import (
    GraphGate,
    IndexDir,
    collect_garbage,
    verify_version,
    write_manifest,
)
from slipway.retrieval.metrics import Qrels, evaluate, read_qrels

logger = logging.getLogger(__name__)

GATE_METRIC = "ndcg@10"
# (graph ranking weight, RRF constant) pairs the index gate tries: a smaller constant lets the
# first ranks of each ranking count more
GRAPH_FUSIONS = tuple((w, k) for k in (10, 60) for w in (1.0, 2.0, 4.0, 8.0))
WITH_GRAPH = "hybrid+graph"


@dataclass(frozen=True)
class JudgedQueries:
    """Queries with relevance judgements (the BEIR layout)."""

    queries: dict[str, str]
    qrels: Qrels

    @classmethod
    def from_beir(cls, root: Path, split: str = "test") -> JudgedQueries:
        """``queries.jsonl`` and ``qrels/<split>.tsv``; only judged queries are kept."""
        qrels_path, queries_path = root / "qrels" / f"{split}.tsv", root / "queries.jsonl"
        for path in (qrels_path, queries_path):
            if not path.is_file():
                raise FileNotFoundError(
                    f"No {path}: the evaluation set must use the BEIR layout "
                    "(queries.jsonl and qrels/<split>.tsv)."
                )
        qrels = read_qrels(qrels_path)
        queries = {}
        with queries_path.open(encoding="utf-8") as handle:
            for line in handle:
                if line.strip():
                    row = json.loads(line)
                    if str(row["_id"]) in qrels:
                        queries[str(row["_id"])] = row["text"]
        if not queries:
            raise ValueError(f"No query in {queries_path} has a judgement in {qrels_path}.")
        return cls(queries=queries, qrels=qrels)


def doc_ranking(hits: Sequence[Hit], doc_of: Callable[[str], str]) -> list[str]:
    """Chunk hits to a ranking of documents (a document ranks where its best chunk does)."""
    seen: dict[str, None] = {}
    for chunk_id, _ in hits:
        seen.setdefault(doc_of(chunk_id), None)
    return list(seen)


def _scored(
    runs: Mapping[str, list[list[Hit]]],
    ids: Sequence[str],
    judged: JudgedQueries,
    doc_of: Callable[[str], str],
) -> dict[str, dict[str, float]]:
    return {
        name: evaluate(
            {q: doc_ranking(h, doc_of) for q, h in zip(ids, hits, strict=True)}, judged.qrels
        )
        for name, hits in runs.items()
    }


def graph_variant(weight: float, rrf_k: int) -> str:
    """The metrics name of hybrid + graph fused at ``weight`` with RRF constant ``rrf_k``."""
    return f"{WITH_GRAPH}@{weight:g}/k{rrf_k}"


def parse_variant(name: str) -> tuple[float, int] | None:
    """``(weight, rrf_k)`` of a :func:`graph_variant` name; None for any other name."""
    head, _, tail = name.partition("@")
    weight, _, k = tail.partition("/k")
    if head != WITH_GRAPH or not k:
        return None
    return float(weight), int(k)


def evaluate_searcher(
    searcher: HybridSearcher,
    judged: JudgedQueries,
    doc_of: Callable[[str], str],
    depth: int = 100,
    graph: Expander | None = None,
    fusions: Sequence[tuple[float, int]] = GRAPH_FUSIONS,
) -> dict[str, dict[str, float]]:
    """nDCG@10, Recall@10 and Recall@100 of the dense, sparse and hybrid rankings. With a
    ``graph`` retriever also of graph retrieval alone, of hybrid + graph fused at each
    ``(weight, rrf_k)`` of ``fusions`` (:func:`graph_variant` names; fusion only), and of the
    best of them as served (``hybrid+graph``: re-ranked when the searcher re-ranks, as
    ``hybrid`` is). Queries are embedded once and each ranking is computed once."""
    ids, texts = list(judged.queries), list(judged.queries.values())
    if searcher.embedder is None:
        raise ValueError("Evaluating a searcher needs its embedder.")
    vectors = searcher.embedder.embed(texts)
    n = max(depth, searcher.fusion.candidates)
    dense = searcher.dense.search(vectors, n)
    sparse = searcher.sparse.search(texts, n)
    runs = {
        "dense": [hits[:depth] for hits in dense],
        "sparse": [hits[:depth] for hits in sparse],
        "hybrid": searcher.finish(texts, dense, sparse, None, depth),
    }
    if graph is None:
        return _scored(runs, ids, judged, doc_of)
    walked = graph(texts, n)
    runs["graph"] = [hits[:depth] for hits in walked]

    def fused(weight: float, rrf_k: int, reranker: Any) -> list[list[Hit]]:
        config = replace(searcher.fusion, graph_weight=weight, rrf_k=rrf_k)
        with_graph = HybridSearcher(
            None, searcher.dense, searcher.sparse, config, reranker, searcher.text_of
        )
        return with_graph.finish(texts, dense, sparse, walked, depth)

    grid = _scored(
        {graph_variant(w, k): fused(w, k, None) for w, k in fusions}, ids, judged, doc_of
    )
    best = max(grid, key=lambda name: (grid[name][GATE_METRIC], name))
    served = grid[best]
    if searcher.reranker is not None:
        weight, rrf_k = parse_variant(best) or (1.0, searcher.fusion.rrf_k)
        served = _scored(
            {WITH_GRAPH: fused(weight, rrf_k, searcher.reranker)}, ids, judged, doc_of
        )[WITH_GRAPH]
    return {**_scored(runs, ids, judged, doc_of), **grid, WITH_GRAPH: served}


def graph_gate(metrics: Mapping[str, Mapping[str, float]], min_gain: float) -> GraphGate:
    """Graph retrieval on for a version only when hybrid + graph, fused as the best variant
    tried, beats hybrid's nDCG@10 on the evaluation set by at least ``min_gain`` (both as
    served: re-ranked when there is a re-ranker)."""
    base = metrics.get("hybrid", {}).get(GATE_METRIC)
    tried = {
        variant: values[GATE_METRIC]
        for name, values in metrics.items()
        if (variant := parse_variant(name)) is not None and GATE_METRIC in values
    }
    served = metrics.get(WITH_GRAPH, {}).get(GATE_METRIC)
    if base is None or not tried or served is None:
        return GraphGate(
            enabled=False,
            weight=1.0,
            hybrid=base,
            reason="no evaluation of hybrid + graph (no evaluation set or no graph snapshot)",
        )
    weight, rrf_k = max(tried, key=lambda v: (tried[v], graph_variant(*v)))
    enabled = served >= base + min_gain
    verdict = "on" if enabled else "off"
    reason = (
        f"{verdict}: hybrid + graph {GATE_METRIC} {served:.4f} (graph weight {weight:g}, RRF k "
        f"{rrf_k}) vs hybrid {base:.4f}; a gain of {min_gain} or more turns it on"
    )
    return GraphGate(
        enabled=enabled,
        weight=weight,
        rrf_k=rrf_k,
        hybrid=base,
        hybrid_graph=served,
        reason=reason,
    )


def quality_gate(
    candidate: Mapping[str, Mapping[str, float]],
    published: Mapping[str, Mapping[str, float]] | None,
    margin: float,
) -> tuple[bool, str]:
    """Whether the candidate may publish: its hybrid nDCG@10 is at most ``margin`` below the
    published version's."""
    new = candidate.get("hybrid", {}).get(GATE_METRIC)
    old = (published or {}).get("hybrid", {}).get(GATE_METRIC)
    if new is None or old is None:
        return True, "no published quality to compare with"
    if new < old - margin:
        return False, (
            f"hybrid {GATE_METRIC} {new:.4f} is more than {margin} below the published "
            f"version's {old:.4f}"
        )
    return True, f"hybrid {GATE_METRIC} {new:.4f} vs published {old:.4f} (margin {margin})"


def flat_metrics(metrics: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """``{"hybrid_ndcg_at_10": ..., "hybrid_graph_w2_ndcg_at_10": ...}``: names MLflow
    accepts."""
    return {
        f"{name.replace('+', '_').replace('@', '_w')}_{metric.replace('@', '_at_')}": value
        for name, values in metrics.items()
        for metric, value in values.items()
    }


class QualityGateError(RuntimeError):
    """A candidate version was refused: the previous version keeps serving."""


def record_metrics(
    index: IndexDir,
    version: str,
    metrics: Mapping[str, Mapping[str, float]],
    graph: GraphGate | None = None,
) -> None:
    """Store a version's retrieval metrics (the next gate compares with them) and its graph
    decision in its manifest."""
    manifest = index.manifest(version)
    manifest.metrics = {k: dict(v) for k, v in metrics.items()}
    if graph is not None:
        manifest.graph = graph
    write_manifest(index, manifest)


def publish_gated(
    index: IndexDir, store: VectorStore, version: str, margin: float, retain: int
) -> str:
    """Publish ``version`` if it passes the gate against the published one; then collect garbage."""
    current = index.published()
    if current != version:
        candidate = index.manifest(version)
        published = index.manifest(current).metrics if current else None
        ok, reason = quality_gate(candidate.metrics, published, margin)
        if not ok:
            raise QualityGateError(
                f"Index {index.name!r} {version} not published: {reason}. "
                f"{current} keeps serving; raise the margin "
                "(SLIPWAY_QUALITY_MARGIN) only if the drop is intended."
            )
        verify_version(
            store.reader(candidate.handle),
            list(chain.from_iterable(d.chunks for d in candidate.documents.values())),
        )
        index.publish(version)
        logger.info("Index %s: published %s (%s)", index.name, version, reason)
    collect_garbage(index, store, retain)
    return version
