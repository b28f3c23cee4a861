"""Knowledge-graph look-ups: entities by id or name with their strongest neighbours, and the
entities nearest to one by its graph (GNN) embedding."""

from __future__ import annotations

import asyncio
from typing import Any

from slipway.access import Reader
from slipway.api.errors import ApiError
from slipway.api.schemas import (
    EntitiesResponse,
    EntityOut,
    Neighbour,
    SimilarEntitiesResponse,
    SimilarEntity,
)
from slipway.deadlines import bounded
from slipway.graph.vectors import NoEmbeddings
from slipway.resources import Resources

MAX_MATCHES = 5


async def entities(name: str, limit: int, res: Resources, reader: Reader) -> EntitiesResponse:
    """Entities matching ``name`` that ``reader`` may know of, in a worker thread within the
    graph deadline."""
    return await bounded(
        asyncio.to_thread(entity_lookup, res, name, limit, reader),
        res.serve.graph_timeout_s,
        "graph",
        "knowledge graph",
    )


def entity_lookup(res: Resources, name: str, limit: int, reader: Reader) -> EntitiesResponse:
    """Entities matching ``name`` with their neighbours; 404 when there is none. A caller who
    may not read every document of the served index version sees only entities mentioned in
    chunks it may read, with mentions and neighbours counted over those chunks."""
    queries = res.graph()
    opened = res.index_state().opened
    if opened.open_to_all(reader):
        rows = queries.find(name)[:MAX_MATCHES]

        def neighbours(entity_id: str) -> list[Any]:
            return list(queries.neighbours(entity_id, limit))
    else:

        def readable(chunk_id: str) -> bool:
            return opened.chunk_readable(chunk_id, reader)

        rows = queries.find_within(name, readable)[:MAX_MATCHES]

        def neighbours(entity_id: str) -> list[Any]:
            return list(queries.neighbours_within(entity_id, limit, readable))

    if not rows:
        raise ApiError(
            404,
            f"No entity named {name!r} in the knowledge graph.",
            param="name",
            code="entity_not_found",
        )
    found = [
        EntityOut(
            id=r.id,
            name=r.name,
            type=r.type,
            mentions=r.mentions,
            aliases=list(r.aliases),
            neighbours=[
                Neighbour(
                    id=n.entity.id, name=n.entity.name, type=n.entity.type, weight=float(n.weight)
                )
                for n in neighbours(r.id)
            ],
        )
        for r in rows
    ]
    return EntitiesResponse(query=name, entities=found)


async def similar(
    entity_id: str, limit: int, res: Resources, reader: Reader
) -> SimilarEntitiesResponse:
    """The entities nearest ``entity_id`` by graph embedding that ``reader`` may know of, in a
    worker thread within the graph deadline."""
    return await bounded(
        asyncio.to_thread(similar_lookup, res, entity_id, limit, reader),
        res.serve.graph_timeout_s,
        "graph",
        "knowledge graph",
    )


def similar_lookup(
    res: Resources, entity_id: str, limit: int, reader: Reader
) -> SimilarEntitiesResponse:
    """Nearest entities by GNN embedding; 404 for an entity without one (or one the caller
    may not know of). A caller who may not read every document sees only entities mentioned
    in chunks it may read (looked up in the graph)."""
    vectors = res.entity_vectors()
    opened = res.index_state().opened
    open_to_all = opened.open_to_all(reader)
    missing = ApiError(
        404,
        f"No graph embedding for entity {entity_id!r}; ids look like PERSON:jeff skilling "
        "(GET /v1/graph/entities/{name} finds them).",
        param="id",
        code="entity_not_found",
    )
    try:
        hits = vectors.similar(entity_id, limit if open_to_all else limit * 4)
    except NoEmbeddings as exc:
        raise ApiError(503, str(exc), type="server_error", code="graph_unavailable") from exc
    except LookupError as exc:
        raise missing from exc
    if not open_to_all:
        chunks = res.graph().graph.mention_chunks([entity_id, *(h[0] for h in hits)])

        def known(eid: str) -> bool:
            return any(opened.chunk_readable(c, reader) for c in chunks.get(eid, []))

        if not known(entity_id):
            raise missing
        hits = [h for h in hits if known(h[0])][:limit]
    return SimilarEntitiesResponse(
        id=entity_id,
        similar=[
            SimilarEntity(id=eid, name=name, type=eid.partition(":")[0], similarity=score)
            for eid, name, score in hits
        ],
    )
