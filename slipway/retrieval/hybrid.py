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


# Shared worker threads: the sparse half of every search, and async callers' searches.
_POOL = ThreadPoolExecutor(max_workers=8, thread_name_prefix="slipway-search")


class HybridSearcher:
    """Dense + sparse search over the same chunk ids."""

    def __init__(self, embedder: Embedder, dense: DenseReader, sparse: SparseIndex,
                 fusion: FusionConfig | None = None, reranker: Reranker | None = None,
                 text_of: Callable[[str], str] | None = None) -> None:
        if reranker is not None and text_of is None:
            raise ValueError("A re-ranker needs the chunk texts (text_of).")
        self.embedder = embedder
        self.dense = dense
        self.sparse = sparse
        self.fusion = fusion or FusionConfig()
        self.reranker = reranker
        self.text_of = text_of

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
        """Dense and sparse at once (onnxruntime, Lance and bm25s release the GIL), fused,
        then re-ranked when a re-ranker is set; many queries per call."""
        n = max(k, self.fusion.candidates)
        sparse_future = _POOL.submit(self.sparse_search, queries, n, filters)
        dense = self.dense_search(queries, n, filters)
        sparse = sparse_future.result()
        fused = [self.fuse(d, s) for d, s in zip(dense, sparse, strict=True)]
        if self.reranker is not None:
            fused = self._rerank(queries, fused)
        return [hits[:k] for hits in fused]

    def fuse(self, dense: Sequence[Hit], sparse: Sequence[Hit]) -> list[Hit]:
        """One ranking from the two, per the fusion config."""
        weights = (self.fusion.dense_weight, self.fusion.sparse_weight)
        if self.fusion.method == "weighted":
            return weighted_fusion([dense, sparse], weights)
        return reciprocal_rank_fusion([dense, sparse], k=self.fusion.rrf_k, weights=weights)

    def _rerank(self, queries: Sequence[str], fused: list[list[Hit]]) -> list[list[Hit]]:
        assert self.reranker is not None and self.text_of is not None
        top = self.fusion.rerank_top
        return [rerank(self.reranker, q, hits, [self.text_of(c) for c, _ in hits[:top]], top)
                for q, hits in zip(queries, fused, strict=True)]
