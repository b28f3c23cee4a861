"""Validation of a retrained retriever: nDCG@10, Recall@10 and Recall@100 on held-out queries for
dense and hybrid search, each with and without re-ranking its top candidates.

Independent of how an index is built: searches are callables from query texts to rankings
(an ONNX embedder over a LanceDB index, or torch embeddings in memory, alike)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Literal

import numpy as np

from slipway.retrieval.evaluation import doc_ranking
from slipway.retrieval.fusion import Hit
from slipway.retrieval.hybrid import FusionConfig
from slipway.retrieval.metrics import Qrels, evaluate
from slipway.retrieval.rerank import Reranker, rerank
from slipway.training.fusion import fuse

Search = Callable[[Sequence[str]], list[list[Hit]]]  # query texts -> one ranking each
Embed = Callable[[list[str]], np.ndarray]  # texts -> (n, dim) vectors
RERANK_TOP = 50
DEPTH = 100


def exact_search(embed: Embed, ids: Sequence[str], vectors: np.ndarray, depth: int) -> Search:
    """Dense search by exact inner product of ``embed(queries)`` against ``vectors`` (normalised
    embeddings: cosine), ``depth`` hits a query."""
    matrix = np.asarray(vectors, dtype=np.float32)

    def search(queries: Sequence[str]) -> list[list[Hit]]:
        if not queries:
            return []
        scores = np.asarray(embed(list(queries)), dtype=np.float32) @ matrix.T
        k = min(depth, len(ids))
        top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return [
            [(ids[j], float(row[j])) for j in order] for row, order in zip(scores, top, strict=True)
        ]

    return search


def reranked(
    reranker: Reranker,
    queries: Sequence[str],
    rankings: Sequence[Sequence[Hit]],
    text_of: Callable[[str], str],
    top: int,
) -> list[list[Hit]]:
    """Each ranking with its first ``top`` hits re-ordered by the re-ranker."""
    return [
        rerank(reranker, query, hits, [text_of(i) for i, _ in hits[:top]], top)
        for query, hits in zip(queries, rankings, strict=True)
    ]


def evaluate_variants(
    queries: Mapping[str, str],
    qrels: Qrels,
    dense: Search,
    sparse: Search,
    fusion: FusionConfig | None = None,
    reranker: Reranker | None = None,
    text_of: Callable[[str], str] | None = None,
    rerank_top: int = RERANK_TOP,
    doc_of: Callable[[str], str] | None = None,
    reranked_variants: Sequence[Literal["dense", "hybrid"]] = ("dense", "hybrid"),
) -> dict[str, dict[str, float]]:
    """Metrics of ``dense``, ``hybrid`` (dense and ``sparse`` fused by ``fusion``) and, with a
    ``reranker``, ``dense_rerank`` and ``hybrid_rerank`` (those of ``reranked_variants``: top
    ``rerank_top`` re-ordered by it, ``text_of`` giving a hit's text) over the judged
    ``queries``. Rankings are of documents, or of chunks mapped to documents by ``doc_of``;
    searches should return at least 100 hits for Recall@100."""
    if reranker is not None and text_of is None:
        raise ValueError("Re-ranking needs the hits' texts (text_of).")
    ids = [q for q in queries if q in qrels]
    if not ids:
        raise ValueError("No validation query has relevance judgements; check the query ids.")
    texts = [queries[q] for q in ids]
    config = fusion or FusionConfig()
    dense_hits, sparse_hits = dense(texts), sparse(texts)
    runs = {
        "dense": dense_hits,
        "hybrid": [fuse(d, s, config) for d, s in zip(dense_hits, sparse_hits, strict=True)],
    }
    if reranker is not None and text_of is not None:
        for name in reranked_variants:
            runs[f"{name}_rerank"] = reranked(reranker, texts, runs[name], text_of, rerank_top)
    return {
        name: evaluate(
            {
                q: doc_ranking(h, doc_of) if doc_of else [i for i, _ in h]
                for q, h in zip(ids, hits, strict=True)
            },
            qrels,
        )
        for name, hits in runs.items()
    }
