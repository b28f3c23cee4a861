"""The retrieval quality gate: dense, sparse and hybrid scored on relevance judgements."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from itertools import chain
from pathlib import Path

from slipway.retrieval.dense import VectorStore
from slipway.retrieval.fusion import Hit
from slipway.retrieval.hybrid import HybridSearcher
from slipway.retrieval.index import IndexDir, collect_garbage, verify_version, write_manifest
from slipway.retrieval.metrics import Qrels, evaluate, read_qrels

logger = logging.getLogger(__name__)

GATE_METRIC = "ndcg@10"


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


def evaluate_searcher(
    searcher: HybridSearcher, judged: JudgedQueries, doc_of: Callable[[str], str], depth: int = 100
) -> dict[str, dict[str, float]]:
    """nDCG@10, Recall@10 and Recall@100 of the dense, sparse and hybrid rankings."""
    ids, texts = list(judged.queries), list(judged.queries.values())
    runs = {
        "dense": searcher.dense_search(texts, depth),
        "sparse": searcher.sparse_search(texts, depth),
        "hybrid": searcher.search(texts, depth),
    }
    return {
        name: evaluate(
            {q: doc_ranking(h, doc_of) for q, h in zip(ids, hits, strict=True)}, judged.qrels
        )
        for name, hits in runs.items()
    }


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
    """``{"hybrid_ndcg_at_10": ...}``: names MLflow accepts."""
    return {
        f"{name}_{metric.replace('@', '_at_')}": value
        for name, values in metrics.items()
        for metric, value in values.items()
    }


class QualityGateError(RuntimeError):
    """A candidate version was refused: the previous version keeps serving."""


def record_metrics(
    index: IndexDir, version: str, metrics: Mapping[str, Mapping[str, float]]
) -> None:
    """Store a version's retrieval metrics in its manifest (the next gate compares with them)."""
    manifest = index.manifest(version)
    manifest.metrics = {k: dict(v) for k, v in metrics.items()}
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
