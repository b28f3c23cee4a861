"""Knowledge graph: extraction, linking, the graph store and its embedded server, GNNs.

``connect()`` reaches the graph: the Neo4j server of ``SLIPWAY_NEO4J_URI`` when set, else the
embedded ArcadeDB Bolt server (started on first use). ``GraphQueries`` answers what the service
asks of it: entities by name and their neighbours. Graph retrieval reads the index version's own
snapshot of the entity-chunk graph (``slipway.graph.snapshot``), not the store.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace

from slipway.config import GraphSettings
from slipway.graph.extraction import entity_key
from slipway.graph.store import EntityRow, Neighbour, Neo4jGraph


@dataclass(frozen=True)
class GraphConnection:
    """Where the graph lives and how to log in."""

    uri: str
    user: str
    password: str
    database: str | None
    embedded: bool


def connection(settings: GraphSettings | None = None) -> GraphConnection:
    """The configured Neo4j server, or the embedded server (started when it is not running)."""
    settings = settings or GraphSettings()
    if settings.neo4j_uri:
        if settings.neo4j_password is None:
            raise RuntimeError(
                "SLIPWAY_NEO4J_URI is set but SLIPWAY_NEO4J_PASSWORD is not; set "
                "it (or name a ZenML secret in SLIPWAY_NEO4J_SECRET)."
            )
        return GraphConnection(
            settings.neo4j_uri,
            settings.neo4j_user,
            settings.neo4j_password.get_secret_value(),
            settings.neo4j_database,
            embedded=False,
        )
    from slipway.graph.server import start_server

    info = start_server(settings)
    return GraphConnection(info.uri, info.user, info.password, info.database, embedded=True)


def connect(settings: GraphSettings | None = None) -> Neo4jGraph:
    """A graph store on the configured server; connectivity is checked before returning."""
    from neo4j import GraphDatabase
    from neo4j.exceptions import AuthError, ServiceUnavailable

    target = connection(settings)
    driver = GraphDatabase.driver(target.uri, auth=(target.user, target.password))
    try:
        driver.verify_connectivity()
    except AuthError as exc:
        driver.close()
        raise RuntimeError(
            f"The graph server at {target.uri} refused user {target.user!r}: "
            "check SLIPWAY_NEO4J_USER and SLIPWAY_NEO4J_PASSWORD."
        ) from exc
    except (ServiceUnavailable, OSError) as exc:
        driver.close()
        raise RuntimeError(
            f"No graph server answers at {target.uri}: check SLIPWAY_NEO4J_URI "
            f"(or unset it to use the embedded server). ({exc})"
        ) from exc
    return Neo4jGraph(driver, target.database)


class GraphQueries:
    """Graph reads for the API: entities by name or id, their neighbours (within what a
    caller may read)."""

    def __init__(self, graph: Neo4jGraph) -> None:
        self.graph = graph

    def find(self, name: str) -> list[EntityRow]:
        """Entities by id (``TYPE:name``) or by name under any type, most mentioned first."""
        exact = self.graph.entity(name)
        if exact is not None:
            return [exact]
        keys = {entity_key(name, kind) for kind in ("PERSON", "ORG", "PLACE", "OTHER")}
        return self.graph.entities_by_key(keys)

    def neighbours(self, entity_id: str, limit: int = 10) -> list[Neighbour]:
        """The entities that co-occur most with ``entity_id``, with their chunk counts."""
        return self.graph.neighbours(entity_id, limit)

    def find_within(self, name: str, readable: Callable[[str], bool]) -> list[EntityRow]:
        """:meth:`find`, keeping only entities that a chunk in ``readable`` mentions; their
        ``mentions`` are those chunks' count (document access control: what is known only
        from documents a caller may not read stays unknown to it)."""
        rows = self.find(name)
        chunks = self.graph.mention_chunks(r.id for r in rows)
        out = []
        for row in rows:
            seen = sum(1 for chunk in chunks.get(row.id, []) if readable(chunk))
            if seen:
                out.append(replace(row, mentions=seen))
        return sorted(out, key=lambda r: (-r.mentions, r.id))

    def neighbours_within(
        self, entity_id: str, limit: int, readable: Callable[[str], bool]
    ) -> list[Neighbour]:
        """:meth:`neighbours` counted over the chunks in ``readable`` only."""
        counts: Counter[str] = Counter()
        rows: dict[str, EntityRow] = {}
        for chunk, entity in self.graph.co_mentions(entity_id):
            if readable(chunk):
                counts[entity.id] += 1
                rows[entity.id] = entity
        ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:limit]
        return [Neighbour(rows[e], n) for e, n in ranked]
