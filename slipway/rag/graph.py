"""Knowledge-graph look-ups: entities by id or name with their strongest neighbours."""

from __future__ import annotations

import asyncio

from slipway.api.errors import ApiError
from slipway.api.schemas import EntitiesResponse, EntityOut, Neighbour
from slipway.deadlines import bounded
from slipway.resources import Resources

MAX_MATCHES = 5


async def entities(name: str, limit: int, res: Resources) -> EntitiesResponse:
    """Entities matching ``name``, in a worker thread within the graph deadline."""
    return await bounded(
        asyncio.to_thread(entity_lookup, res, name, limit),
        res.serve.graph_timeout_s,
        "graph",
        "knowledge graph",
    )


def entity_lookup(res: Resources, name: str, limit: int) -> EntitiesResponse:
    """Entities matching ``name`` with their neighbours; 404 when there is none."""
    queries = res.graph()
    rows = queries.find(name)[:MAX_MATCHES]
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
                for n in queries.neighbours(r.id, limit)
            ],
        )
        for r in rows
    ]
    return EntitiesResponse(query=name, entities=found)
