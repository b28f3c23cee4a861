"""Hybrid search: dense and sparse retrieval run concurrently, then fused."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from slipway.embedding import Embedder
from slipway.retrieval.dense import VectorStore
from slipway.retrieval.fusion import Hit, reciprocal_rank_fusion, weighted_fusion
from slipway.retrieval.sparse import SparseIndex


@dataclass(frozen=True)
class FusionConfig:
    """How the two rankings become one."""

    method: Literal["rrf", "weighted"] = "rrf"
    rrf_k: int = 60
    dense_weight: float = 1.0
    sparse_weight: float = 1.0
    candidates: int = 100  # per retriever, before fusion


class HybridSearcher:
    """Dense + sparse search over the same chunk ids."""

    def __init__(self, embedder: Embedder, dense: VectorStore, sparse: SparseIndex,
                 fusion: FusionConfig | None = None) -> None:
        self.embedder = embedder
        self.dense = dense
        self.sparse = sparse
        self.fusion = fusion or FusionConfig()

    def dense_search(self, queries: Sequence[str], k: int) -> list[list[Hit]]:
        """Nearest chunks by embedding."""
        return self.dense.search(self.embedder.embed(list(queries)), k)

    def sparse_search(self, queries: Sequence[str], k: int) -> list[list[Hit]]:
        """Best chunks by BM25."""
        return self.sparse.search(queries, k)

    async def search_async(self, queries: Sequence[str], k: int = 10) -> list[list[Hit]]:
        """Both retrievers at once (threads: onnxruntime and bm25s release the GIL), then fusion."""
        n = max(k, self.fusion.candidates)
        dense, sparse = await asyncio.gather(
            asyncio.to_thread(self.dense_search, queries, n),
            asyncio.to_thread(self.sparse_search, queries, n),
        )
        return [self.fuse(d, s)[:k] for d, s in zip(dense, sparse, strict=True)]

    def search(self, queries: Sequence[str], k: int = 10) -> list[list[Hit]]:
        """Synchronous wrapper of :meth:`search_async` for batch evaluation."""
        return asyncio.run(self.search_async(queries, k))

    def fuse(self, dense: Sequence[Hit], sparse: Sequence[Hit]) -> list[Hit]:
        """One ranking from the two, per the fusion config."""
        weights = (self.fusion.dense_weight, self.fusion.sparse_weight)
        if self.fusion.method == "weighted":
            return weighted_fusion([dense, sparse], weights)
        return reciprocal_rank_fusion([dense, sparse], k=self.fusion.rrf_k, weights=weights)
