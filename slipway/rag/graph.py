"""Knowledge-graph look-ups: entities by id or name with their strongest neighbours."""

from __future__ import annotations

import asyncio
from typing import Any

from slipway.access import Reader
from slipway.api.errors import ApiError
from slipway.api.schemas import EntitiesResponse, EntityOut, Neighbour
from slipway.deadlines import bounded
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
