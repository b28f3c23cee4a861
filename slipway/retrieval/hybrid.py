"""Hybrid search: dense and sparse retrieval (and graph retrieval) are fused, then maybe
re-ranked; queries are embedded first, then searched with their vectors."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Literal

import numpy as np

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
    graph_weight: float = 1.0  # weight of the graph ranking (the index gate may set its own)


RETRIEVAL_FILE = "retrieval.json"  # a bundle's tuned fusion (written by the retraining loop)


def load_fusion(bundle_root: Path) -> FusionConfig:
    """The fusion a bundle was tuned with (``retrieval.json``'s ``fusion``), else the default."""
    path = Path(bundle_root) / RETRIEVAL_FILE
    if not path.is_file():
        return FusionConfig()
    given = json.loads(path.read_text(encoding="utf-8")).get("fusion", {})
    known = {f.name for f in fields(FusionConfig)}
    unknown = sorted(set(given) - known)
    if unknown:
        raise ValueError(f"{path}: unknown fusion settings {unknown}; known: {sorted(known)}.")
    return FusionConfig(**given)


def save_fusion(bundle_root: Path, config: FusionConfig, **extra: object) -> Path:
    """Write ``config`` (and ``extra`` facts, e.g. how it was chosen) as the bundle's
    ``retrieval.json``."""
    path = Path(bundle_root) / RETRIEVAL_FILE
    path.write_text(
        json.dumps({"fusion": asdict(config), **extra}, indent=1, sort_keys=True),
        encoding="utf-8",
    )
    return path


# Chunks graph retrieval reaches from the queries' entities: (queries, k) -> rankings.
Expander = Callable[[Sequence[str], int], list[list[Hit]]]

# Embeds queries for an event loop: (queries) -> vectors, awaited before the search proper.
AsyncEmbed = Callable[[list[str]], Awaitable[np.ndarray]]


class HybridSearcher:
    """Dense + sparse (+ optionally graph) retrieval over the same chunk ids.

    The retrieval seam: queries are embedded first, then searched with their vectors. Each part
    of a search is a leaf task: nothing here submits work to a pool and then waits on it from
    inside that pool (which deadlocked the service once as many searches as threads were in
    flight)."""

    def __init__(
        self,
        embedder: Embedder | None,
        dense: DenseReader,
        sparse: SparseIndex,
        fusion: FusionConfig | None = None,
        reranker: Reranker | None = None,
        text_of: Callable[[str], str] | None = None,
        expander: Expander | None = None,
    ) -> None:
        if reranker is not None and text_of is None:
            raise ValueError("A re-ranker needs the chunk texts (text_of).")
        self.embedder = embedder
        self.dense = dense
        self.sparse = sparse
        self.fusion = fusion or FusionConfig()
        self.reranker = reranker
        self.text_of = text_of
        self.expander = expander

    def _embed(self, queries: Sequence[str]) -> np.ndarray:
        if self.embedder is None:
            raise ValueError(
                "This searcher has no embedder: pass query vectors "
                "(search_vectors) or an async embed function (search_async)."
            )
        return self.embedder.embed(list(queries))

    def dense_search(
        self, queries: Sequence[str], k: int, filters: Filters | None = None
    ) -> list[list[Hit]]:
        """Nearest chunks by embedding."""
        return self.dense.search(self._embed(queries), k, filters)

    def sparse_search(
        self, queries: Sequence[str], k: int, filters: Filters | None = None
    ) -> list[list[Hit]]:
        """Best chunks by BM25."""
        return self.sparse.search(queries, k, filters)

    def search(
        self, queries: Sequence[str], k: int = 10, filters: Filters | None = None
    ) -> list[list[Hit]]:
        """Embed ``queries`` with the searcher's embedder, then :meth:`search_vectors`."""
        return self.search_vectors(queries, self._embed(queries), k, filters)

    def search_vectors(
        self,
        queries: Sequence[str],
        vectors: np.ndarray,
        k: int = 10,
        filters: Filters | None = None,
    ) -> list[list[Hit]]:
        """Dense (by ``vectors``), sparse and graph rankings in the calling thread, fused, then
        re-ranked when a re-ranker is set; many queries per call."""
        n = max(k, self.fusion.candidates)
        dense = self.dense.search(vectors, n, filters)
        sparse = self.sparse.search(queries, n, filters)
        graph = self.expander(list(queries), n) if self.expander is not None else None
        return self.finish(queries, dense, sparse, graph, k, filters)

    async def search_async(
        self,
        queries: Sequence[str],
        k: int = 10,
        filters: Filters | None = None,
        embed: AsyncEmbed | None = None,
    ) -> list[list[Hit]]:
        """:meth:`search_vectors` for an event loop: the queries are embedded first (``embed``,
        e.g. the encoder service, else the searcher's embedder in a worker thread), then the
        dense, sparse and graph lookups run at once, each a leaf task in a worker thread
        (onnxruntime, Lance and bm25s release the GIL), and the re-ranker in one more."""
        queries = list(queries)
        vectors = (
            await embed(queries)
            if embed is not None
            else await asyncio.to_thread(self._embed, queries)
        )
        n = max(k, self.fusion.candidates)
        parts: list[Awaitable[list[list[Hit]]]] = [
            asyncio.to_thread(self.dense.search, vectors, n, filters),
            asyncio.to_thread(self.sparse.search, queries, n, filters),
        ]
        if self.expander is not None:
            parts.append(asyncio.to_thread(self.expander, queries, n))
        dense, sparse, *graph = await asyncio.gather(*parts)
        if self.reranker is None:
            return self.finish(queries, dense, sparse, graph[0] if graph else None, k, filters)
        return await asyncio.to_thread(
            self.finish, queries, dense, sparse, graph[0] if graph else None, k, filters
        )

    def finish(
        self,
        queries: Sequence[str],
        dense: list[list[Hit]],
        sparse: list[list[Hit]],
        graph: list[list[Hit]] | None,
        k: int,
        filters: Filters | None = None,
    ) -> list[list[Hit]]:
        """Fuse the rankings of each query (with filters, graph hits only boost chunks that
        passed them), re-rank when a re-ranker is set, keep the top ``k``."""
        if graph is None:
            fused = [self.fuse(d, s) for d, s in zip(dense, sparse, strict=True)]
        else:
            if filters:
                graph = [_within(g, d, s) for d, s, g in zip(dense, sparse, graph, strict=True)]
            fused = [self.fuse(d, s, g) for d, s, g in zip(dense, sparse, graph, strict=True)]
        if self.reranker is not None:
            fused = self._rerank(queries, fused)
        return [hits[:k] for hits in fused]

    def fuse(
        self, dense: Sequence[Hit], sparse: Sequence[Hit], graph: Sequence[Hit] | None = None
    ) -> list[Hit]:
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
        return [
            rerank(self.reranker, q, hits, [self.text_of(c) for c, _ in hits[:top]], top)
            for q, hits in zip(queries, fused, strict=True)
        ]


def _within(graph: Sequence[Hit], dense: Sequence[Hit], sparse: Sequence[Hit]) -> list[Hit]:
    """The graph hits that are also dense or sparse candidates (those passed the filters)."""
    allowed = {c for c, _ in dense} | {c for c, _ in sparse}
    return [hit for hit in graph if hit[0] in allowed]
