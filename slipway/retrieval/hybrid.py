"""Hybrid search: dense and sparse retrieval run concurrently, are fused, then maybe re-ranked."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal

from slipway.embedding import Embedder
from slipway.retrieval.dense import DenseReader, Filters
from slipway.retrieval.fusion import Hit, reciprocal_rank_fusion, weighted_fusion
from slipway.retrieval.rerank import Reranker, rerank
from slipway.retrieval.sparse import SparseIndex


@dataclass(frozen=True)
class FusionConfig:
    """How the two rankings become one."""

    method: Literal["rrf", "weighted"] = "rrf"
    rrf_k: int = 60
    dense_weight: float = 1.0
    sparse_weight: float = 1.0
    candidates: int = 100  # per retriever, before fusion
    rerank_top: int = 20  # fused hits the re-ranker re-orders, when there is one
    graph_weight: float = 1.0  # weight of the graph-expansion ranking, when there is one


# Chunks a graph expansion reaches from the queries' entities: (queries, k) -> rankings.
Expander = Callable[[Sequence[str], int], list[list[Hit]]]

# Shared worker threads: the sparse half of every search, and async callers' searches.
_POOL = ThreadPoolExecutor(max_workers=8, thread_name_prefix="slipway-search")


class HybridSearcher:
    """Dense + sparse (+ optionally knowledge-graph expansion) search over the same chunk ids."""

    def __init__(self, embedder: Embedder, dense: DenseReader, sparse: SparseIndex,
                 fusion: FusionConfig | None = None, reranker: Reranker | None = None,
                 text_of: Callable[[str], str] | None = None,
                 expander: Expander | None = None) -> None:
        if reranker is not None and text_of is None:
            raise ValueError("A re-ranker needs the chunk texts (text_of).")
        self.embedder = embedder
        self.dense = dense
        self.sparse = sparse
        self.fusion = fusion or FusionConfig()
        self.reranker = reranker
        self.text_of = text_of
        self.expander = expander

    def dense_search(self, queries: Sequence[str], k: int,
                     filters: Filters | None = None) -> list[list[Hit]]:
        """Nearest chunks by embedding."""
        return self.dense.search(self.embedder.embed(list(queries)), k, filters)

    def sparse_search(self, queries: Sequence[str], k: int,
                      filters: Filters | None = None) -> list[list[Hit]]:
        """Best chunks by BM25."""
        return self.sparse.search(queries, k, filters)

    async def search_async(self, queries: Sequence[str], k: int = 10,
                           filters: Filters | None = None) -> list[list[Hit]]:
        """:meth:`search` for an event loop (the service): it runs in the searcher's pool."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(_POOL, self.search, queries, k, filters)

    def search(self, queries: Sequence[str], k: int = 10,
               filters: Filters | None = None) -> list[list[Hit]]:
        """Dense and sparse at once (onnxruntime, Lance and bm25s release the GIL), fused with
        the graph expansion when an expander is set, then re-ranked when a re-ranker is set;
        many queries per call. With filters, graph hits only boost chunks that passed them."""
        n = max(k, self.fusion.candidates)
        sparse_future = _POOL.submit(self.sparse_search, queries, n, filters)
        graph_future = (_POOL.submit(self.expander, list(queries), n)
                        if self.expander is not None else None)
        dense = self.dense_search(queries, n, filters)
        sparse = sparse_future.result()
        if graph_future is None:
            fused = [self.fuse(d, s) for d, s in zip(dense, sparse, strict=True)]
        else:
            graph = graph_future.result()
            if filters:
                graph = [_within(g, d, s) for d, s, g in zip(dense, sparse, graph, strict=True)]
            fused = [self.fuse(d, s, g) for d, s, g in zip(dense, sparse, graph, strict=True)]
        if self.reranker is not None:
            fused = self._rerank(queries, fused)
        return [hits[:k] for hits in fused]

    def fuse(self, dense: Sequence[Hit], sparse: Sequence[Hit],
             graph: Sequence[Hit] | None = None) -> list[Hit]:
        """One ranking from the two (or three), per the fusion config."""
        rankings = [dense, sparse]
        weights = [self.fusion.dense_weight, self.fusion.sparse_weight]
        if graph is not None:
            rankings.append(graph)
            weights.append(self.fusion.graph_weight)
        if self.fusion.method == "weighted":
            return weighted_fusion(rankings, weights)
        return reciprocal_rank_fusion(rankings, k=self.fusion.rrf_k, weights=weights)

    def _rerank(self, queries: Sequence[str], fused: list[list[Hit]]) -> list[list[Hit]]:
        assert self.reranker is not None and self.text_of is not None
        top = self.fusion.rerank_top
        return [rerank(self.reranker, q, hits, [self.text_of(c) for c, _ in hits[:top]], top)
                for q, hits in zip(queries, fused, strict=True)]


def _within(graph: Sequence[Hit], dense: Sequence[Hit], sparse: Sequence[Hit]) -> list[Hit]:
    """The graph hits that are also dense or sparse candidates (those passed the filters)."""
    allowed = {c for c, _ in dense} | {c for c, _ in sparse}
    return [hit for hit in graph if hit[0] in allowed]
