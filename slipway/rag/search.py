"""Search: the published index, hybrid (dense + BM25 and, when the index gate turned it on or
the caller asks, graph retrieval; fused), filtered, optionally re-ranked; cached per model and
index version. Queries are embedded first (through the
encoder), then searched with their vectors, within the search deadline.

Access control: the caller's readable ACL tags join the filters (both retrievers pre-filter, so
graph hits outside them are dropped too), the cache key holds them (a result cached for one
principal set never serves another), and every hydrated hit is checked once more against the
version's document ACLs (fail-closed, whatever a vector store did with the filter)."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np

from slipway.access import AclError, Reader
from slipway.api.errors import ApiError
from slipway.api.schemas import SearchRequest, SearchResponse
from slipway.deadlines import bounded
from slipway.rag.inference import embed_texts
from slipway.resources import Resources
from slipway.retrieval.dense import Filters
from slipway.retrieval.index import ChunkHit, OpenIndex, group_by_document, indexed_text
from slipway.retrieval.rerank import Reranker, rerank

GROUP_CANDIDATES = 5  # chunks fetched per wanted document when results are grouped


def access_filters(opened: OpenIndex, filters: Filters | None, reader: Reader) -> Filters:
    """The caller's filters with the ACL tags ``reader`` may read (when the version needs
    them); 400 for a filter on a reserved key."""
    try:
        return reader.restrict(filters, opened.open_to_all(reader))
    except AclError as exc:
        raise ApiError(400, str(exc), param="filters") from exc


async def search(query: SearchRequest, res: Resources, reader: Reader) -> SearchResponse:
    """The top hits for ``query`` in the published index that ``reader`` may read."""
    return (await search_embedded(query, res, reader))[0]


async def search_embedded(
    query: SearchRequest, res: Resources, reader: Reader
) -> tuple[SearchResponse, np.ndarray | None]:
    """:func:`search`, and the query's unit vector when the encoder embedded it for this call
    (``None`` when the result came from the cache)."""
    state = res.index_state()
    opened = state.opened
    filters = access_filters(opened, query.filters, reader)
    rerank_on = query.rerank and res.can_rerank
    graph = res.use_graph(state, query.graph)
    payload: dict[str, Any] = {
        "q": query.query,
        "k": query.top_k,
        "f": filters,
        "r": rerank_on,
        "g": graph,
        "by": query.group_by,
    }
    key, value = res.cached("search", res.versions(state), payload)
    if value is not None:
        return SearchResponse.model_validate(value), None
    searcher = state.searchers.get(graph)
    if searcher is None:  # built once per version (graph retrieval loads its snapshot)
        searcher = await asyncio.to_thread(res.searcher, state, graph)

    embedded: list[np.ndarray] = []

    async def embed(queries: list[str]) -> np.ndarray:
        vectors = await embed_texts(res, queries)
        embedded.append(vectors[0])
        return vectors

    top = res.fusion.rerank_top
    wanted = query.top_k * (GROUP_CANDIDATES if query.group_by else 1)
    candidates = max(wanted, top) if rerank_on else wanted
    hits = (
        await bounded(
            searcher.search_async([query.query], candidates, filters or None, embed=embed),
            res.serve.search_timeout_s,
            "search",
            "search",
        )
    )[0]
    results = [h for h in opened.hydrate(hits) if opened.chunk_readable(h.id, reader)]
    if rerank_on:  # the one re-rank path of the service (answers take it too)
        results = (await rerank_top(res, query.query, results, top))[:wanted]
    results = group_by_document(results, query.top_k) if query.group_by else results[: query.top_k]
    response = SearchResponse(
        index_version=opened.version,
        model=res.model_id,
        reranked=rerank_on,
        graph_expanded=graph,
        results=results,
    )
    res.remember(key, response.model_dump())
    return response, embedded[0] if embedded else None


async def rerank_top(
    res: Resources, query: str, hits: list[ChunkHit], top_n: int
) -> list[ChunkHit]:
    """``hits`` re-ranked by the configured re-ranker (as they are without one), in a worker
    thread within the search deadline."""
    if res.reranker is None or not hits:
        return hits
    return await bounded(
        asyncio.to_thread(rerank_hits, res.reranker, query, hits, top_n),
        res.serve.search_timeout_s,
        "search",
        "re-ranker",
    )


def rerank_hits(reranker: Reranker, query: str, hits: list[ChunkHit], top_n: int) -> list[ChunkHit]:
    """``hits`` with the first ``top_n`` re-ordered (and re-scored) by the re-ranker."""
    by_id = {h.id: h for h in hits}
    order = rerank(
        reranker,
        query,
        [(h.id, h.score) for h in hits],
        [indexed_text(h.title, h.text) for h in hits[:top_n]],
        top_n,
    )
    return [by_id[chunk_id].model_copy(update={"score": score}) for chunk_id, score in order]
