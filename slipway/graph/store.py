"""The graph store: the official ``neo4j`` driver over Bolt, for Neo4j 5 and the embedded
ArcadeDB server alike. Every statement is parameterized Cypher; every write batch is one
managed transaction (the driver retries transient failures)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Self

import numpy as np
from neo4j import Driver, ManagedTransaction
from neo4j.exceptions import ConstraintError
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_random

from slipway.graph.linking import StoredContext, cooccurrence_pairs

# Lookups by a list of ids or names UNWIND the list and match through the index: ArcadeDB
# answers `WHERE x IN $list` with a scan of the whole label.

# Idempotent, inside the Cypher subset Neo4j 5 and ArcadeDB share (no full-text or vector
# index syntax, no procedures).
SCHEMA = (
    "CREATE CONSTRAINT document_id IF NOT EXISTS FOR (d:Document) REQUIRE d.id IS UNIQUE",
    "CREATE CONSTRAINT chunk_id IF NOT EXISTS FOR (c:Chunk) REQUIRE c.id IS UNIQUE",
    "CREATE CONSTRAINT entity_id IF NOT EXISTS FOR (e:Entity) REQUIRE e.id IS UNIQUE",
    "CREATE INDEX entity_key IF NOT EXISTS FOR (e:Entity) ON (e.key)",
)

# Entities: which of a batch exist is read through the id index first; new ones are created in
# bulk, existing ones updated. A pair with an endpoint created in the same transaction cannot
# have an edge yet, so it is created outright (pairs of two new entities in the same statement
# that creates them, without index lookups); only pairs of existing entities need MERGE (on
# ArcadeDB the edge-existence check of MERGE is most of the cost of a relation write). A writer
# racing on the same new entity hits the uniqueness constraint and its transaction is re-run.
EXISTING_ENTITIES = """
UNWIND $ids AS id
MATCH (e:Entity {id: id})
RETURN e.id AS id
"""
CREATE_ENTITIES = """
UNWIND $rows AS row
CREATE (:Entity {id: row.id, name: row.name, type: row.type, key: row.key,
                 aliases: row.aliases, mentions: row.n})
"""
CREATE_ENTITIES_AND_PAIRS = """
UNWIND $rows AS row
CREATE (e:Entity {id: row.id, name: row.name, type: row.type, key: row.key,
                  aliases: row.aliases, mentions: row.n})
WITH collect(e) AS created
UNWIND $pairs AS pair
WITH created[pair.a] AS a, created[pair.b] AS b, pair
CREATE (a)-[:CO_OCCURS {weight: pair.w}]->(b)
"""
UPDATE_ENTITIES = """
UNWIND $rows AS row
MATCH (e:Entity {id: row.id})
SET e.mentions = e.mentions + row.n,
    e.aliases = e.aliases + [a IN row.aliases WHERE NOT a IN e.aliases]
"""
READ_CONTEXTS = """
UNWIND $ids AS id
MATCH (e:Entity {id: id}) WHERE e.context IS NOT NULL
RETURN e.id AS id, e.context AS context, e.context_count AS count
"""
SET_CONTEXTS = """
UNWIND $rows AS row
MATCH (e:Entity {id: row.id})
SET e.context = row.context, e.context_count = row.count
"""
CREATE_DOCUMENTS = """
UNWIND $rows AS row
CREATE (d:Document {id: row.id, hash: row.hash, title: row.title})
WITH d, row
UNWIND row.chunks AS chunk
CREATE (d)-[:HAS_CHUNK]->(:Chunk {id: chunk.id, doc_id: row.id, position: chunk.position})
"""
CREATE_MENTIONS = """
UNWIND $rows AS row
MATCH (c:Chunk {id: row.chunk})
MATCH (e:Entity {id: row.entity})
CREATE (c)-[:MENTIONS {count: row.n}]->(e)
"""
CREATE_COOCCURRENCE = """
UNWIND $rows AS row
MATCH (a:Entity {id: row.a})
MATCH (b:Entity {id: row.b})
CREATE (a)-[:CO_OCCURS {weight: row.w}]->(b)
"""
ADD_COOCCURRENCE = """
UNWIND $rows AS row
MATCH (a:Entity {id: row.a})
MATCH (b:Entity {id: row.b})
MERGE (a)-[r:CO_OCCURS]->(b)
ON CREATE SET r.weight = row.w
ON MATCH SET r.weight = r.weight + row.w
"""
READ_DOCUMENT_MENTIONS = """
UNWIND $ids AS id
MATCH (d:Document {id: id})
OPTIONAL MATCH (d)-[:HAS_CHUNK]->(c:Chunk)
OPTIONAL MATCH (c)-[m:MENTIONS]->(e:Entity)
RETURN c.id AS chunk, e.id AS entity, m.count AS n
"""
SUBTRACT_COOCCURRENCE = """
UNWIND $rows AS row
MATCH (a:Entity {id: row.a})-[r:CO_OCCURS]->(b:Entity {id: row.b})
SET r.weight = r.weight - row.w
WITH r WHERE r.weight <= 0
DELETE r
"""
SUBTRACT_MENTIONS = """
UNWIND $rows AS row
MATCH (e:Entity {id: row.id})
SET e.mentions = e.mentions - row.n
"""
DELETE_DOCUMENTS = """
UNWIND $ids AS id
MATCH (d:Document {id: id})
OPTIONAL MATCH (d)-[:HAS_CHUNK]->(c:Chunk)
DETACH DELETE c, d
"""
DELETE_ORPHANS = """
UNWIND $ids AS id
MATCH (e:Entity {id: id}) WHERE e.mentions <= 0
DETACH DELETE e
"""


@dataclass(frozen=True)
class EntityRow:
    """An entity as the graph holds it."""

    id: str
    name: str
    type: str
    aliases: list[str]
    mentions: int


@dataclass(frozen=True)
class Neighbour:
    """A co-occurring entity and in how many chunks the two occur together."""

    entity: EntityRow
    weight: int


@dataclass(frozen=True)
class DocumentWrite:
    """One document's share of a graph write: its node, chunks, mentions and pairs."""

    id: str
    hash: str
    title: str
    chunks: list[tuple[str, int]]  # (chunk id, position)
    mentions: dict[str, dict[str, int]]  # chunk id -> entity id -> count


def batched(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    """Consecutive slices of at most ``size`` items."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _entity(record: Mapping[str, Any]) -> EntityRow:
    return EntityRow(
        record["id"],
        record["name"],
        record["type"],
        list(record["aliases"] or []),
        int(record["mentions"] or 0),
    )


_ENTITY_FIELDS = (
    "e.id AS id, e.name AS name, e.type AS type, e.aliases AS aliases, e.mentions AS mentions"
)


class Neo4jGraph:
    """Reads and writes the knowledge graph through one driver and database."""

    def __init__(self, driver: Driver, database: str | None = None) -> None:
        self.driver = driver
        self.database = database

    def close(self) -> None:
        """Close the driver."""
        self.driver.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def read(self, query: str, **params: Any) -> list[dict[str, Any]]:
        """Rows of a parameterized read query, in a managed read transaction."""
        with self.driver.session(database=self.database) as session:
            return session.execute_read(lambda tx: [r.data() for r in tx.run(query, **params)])

    def write(self, work: Any) -> Any:
        """Run ``work(tx)`` in a managed write transaction (retried on transient errors)."""
        with self.driver.session(database=self.database) as session:
            return session.execute_write(work)

    def ensure_schema(self) -> None:
        """Create the uniqueness constraints and indexes if missing (idempotent)."""
        for statement in SCHEMA:
            self.write(lambda tx, s=statement: tx.run(s).consume())

    # -- refresh -------------------------------------------------------------------------
    def document_hashes(self) -> dict[str, str]:
        """Every document in the graph with the signature it was written with."""
        rows = self.read("MATCH (d:Document) RETURN d.id AS id, d.hash AS hash")
        return {row["id"]: row["hash"] for row in rows}

    def entity_types(self, keys: Iterable[str]) -> dict[str, set[str]]:
        """The types the graph has for each normalised name."""
        rows = self.read(
            "UNWIND $keys AS key MATCH (e:Entity {key: key}) RETURN e.key AS key, e.type AS type",
            keys=sorted(set(keys)),
        )
        found: dict[str, set[str]] = {}
        for row in rows:
            found.setdefault(row["key"], set()).add(row["type"])
        return found

    def entity_contexts(self, ids: Iterable[str]) -> dict[str, StoredContext]:
        """The stored context means of these entities (those that have one)."""
        rows = self.read(READ_CONTEXTS, ids=sorted(set(ids)))
        return {
            r["id"]: StoredContext(np.asarray(r["context"], np.float32), int(r["count"]))
            for r in rows
        }

    def remove_documents(self, ids: Sequence[str], max_pair_entities: int) -> None:
        """Detach these documents in one transaction: their chunks, mentions and co-occurrence
        counts go, and entities left with no mention are deleted."""
        self.write(lambda tx: _remove(tx, list(ids), max_pair_entities))

    def add_documents(
        self,
        docs: Sequence[DocumentWrite],
        entities: Sequence[dict[str, Any]],
        contexts: Mapping[str, tuple[np.ndarray, int]],
        max_pair_entities: int,
    ) -> None:
        """Write documents with their chunks, mentions and co-occurrences in one transaction."""
        for attempt in Retrying(
            retry=retry_if_exception_type(ConstraintError),
            stop=stop_after_attempt(3),
            wait=wait_random(0.05, 0.5),
            reraise=True,
        ):
            with attempt:
                self.write(lambda tx: _add(tx, docs, entities, contexts, max_pair_entities))

    # -- reads ---------------------------------------------------------------------------
    def counts(self) -> dict[str, int]:
        """Nodes per label and relationships per type."""
        nodes = self.read("MATCH (n) RETURN labels(n)[0] AS name, count(*) AS n")
        edges = self.read("MATCH ()-[r]->() RETURN type(r) AS name, count(*) AS n")
        return {row["name"]: int(row["n"]) for row in nodes + edges}

    def entity(self, entity_id: str) -> EntityRow | None:
        """One entity by id."""
        rows = self.read(f"MATCH (e:Entity {{id: $id}}) RETURN {_ENTITY_FIELDS}", id=entity_id)
        return _entity(rows[0]) if rows else None

    def entities_by_key(self, keys: Iterable[str]) -> list[EntityRow]:
        """Entities whose normalised name is one of ``keys``, most mentioned first."""
        rows = self.read(
            f"UNWIND $keys AS key MATCH (e:Entity {{key: key}}) "
            f"RETURN {_ENTITY_FIELDS} ORDER BY mentions DESC, id",
            keys=sorted(set(keys)),
        )
        return [_entity(row) for row in rows]

    def neighbours(self, entity_id: str, limit: int = 10) -> list[Neighbour]:
        """The entities co-occurring most often with one entity."""
        rows = self.read(
            "MATCH (x:Entity {id: $id})-[r:CO_OCCURS]-(e:Entity) "
            f"RETURN {_ENTITY_FIELDS}, r.weight AS weight ORDER BY weight DESC, id LIMIT $limit",
            id=entity_id,
            limit=limit,
        )
        return [Neighbour(_entity(row), int(row["weight"])) for row in rows]

    def mention_chunks(self, entity_ids: Iterable[str]) -> dict[str, list[str]]:
        """The chunks that mention each of ``entity_ids``."""
        rows = self.read(
            "UNWIND $ids AS id MATCH (e:Entity {id: id})<-[:MENTIONS]-(c:Chunk) "
            "RETURN e.id AS entity, c.id AS chunk",
            ids=sorted(set(entity_ids)),
        )
        out: dict[str, list[str]] = {}
        for row in rows:
            out.setdefault(row["entity"], []).append(row["chunk"])
        return out

    def co_mentions(self, entity_id: str) -> list[tuple[str, EntityRow]]:
        """(chunk, entity) for every other entity a chunk mentioning ``entity_id`` mentions:
        co-occurrence by chunk, for counting over a subset of chunks."""
        rows = self.read(
            "MATCH (x:Entity {id: $id})<-[:MENTIONS]-(c:Chunk)-[:MENTIONS]->(e:Entity) "
            f"WHERE e.id <> $id RETURN c.id AS chunk, {_ENTITY_FIELDS}",
            id=entity_id,
        )
        return [(row["chunk"], _entity(row)) for row in rows]

    def chunks_mentioning(
        self, weights: Mapping[str, float], limit: int
    ) -> list[tuple[str, float]]:
        """Chunks ranked by the weighted mentions of the given entities."""
        rows = self.read(
            "UNWIND $rows AS row MATCH (e:Entity {id: row.id})<-[m:MENTIONS]-(c:Chunk) "
            "RETURN c.id AS chunk, sum(row.w * m.count) AS score "
            "ORDER BY score DESC, chunk LIMIT $limit",
            rows=[{"id": k, "w": float(w)} for k, w in weights.items()],
            limit=limit,
        )
        return [(row["chunk"], float(row["score"])) for row in rows]

    def entity_graph(self) -> tuple[list[str], list[str], np.ndarray, np.ndarray]:
        """Entity ids and names, and the co-occurrence edges as index pairs with weights."""
        nodes = self.read("MATCH (e:Entity) RETURN e.id AS id, e.name AS name ORDER BY id")
        ids = [row["id"] for row in nodes]
        position = {eid: i for i, eid in enumerate(ids)}
        edges = self.read(
            "MATCH (a:Entity)-[r:CO_OCCURS]->(b:Entity) RETURN a.id AS a, b.id AS b, r.weight AS w"
        )
        pairs = np.array(
            [[position[r["a"]], position[r["b"]]] for r in edges], dtype=np.int64
        ).reshape(-1, 2)
        weights = np.array([float(r["w"]) for r in edges], dtype=np.float32)
        order = np.lexsort((pairs[:, 1], pairs[:, 0]))  # storage order varies; training must not
        return ids, [row["name"] for row in nodes], pairs[order], weights[order]

    def set_embeddings(self, ids: Sequence[str], vectors: np.ndarray, batch: int = 2000) -> None:
        """Write graph embeddings to the entities' ``embedding`` property, batch by batch."""
        rows = [
            {"id": eid, "v": [float(x) for x in vec]} for eid, vec in zip(ids, vectors, strict=True)
        ]
        for part in batched(rows, batch):
            self.write(
                lambda tx, p=part: tx.run(
                    "UNWIND $rows AS row MATCH (e:Entity {id: row.id}) SET e.embedding = row.v",
                    rows=list(p),
                ).consume()
            )

    def clear(self) -> None:
        """Delete every node and relationship of the graph (tests and full rebuilds)."""
        self.write(lambda tx: tx.run("MATCH (n) DETACH DELETE n").consume())


def _remove(tx: ManagedTransaction, ids: list[str], max_pair_entities: int) -> None:
    chunk_entities: dict[str, dict[str, int]] = {}
    mentions: Counter[str] = Counter()
    for record in tx.run(READ_DOCUMENT_MENTIONS, ids=ids):
        if record["entity"] is not None:
            chunk_entities.setdefault(record["chunk"], {})[record["entity"]] = int(record["n"])
            mentions[record["entity"]] += int(record["n"])
    # exactly the pairs _add counted for these chunks
    pairs = cooccurrence_pairs(chunk_entities, max_pair_entities)
    tx.run(
        SUBTRACT_COOCCURRENCE, rows=[{"a": a, "b": b, "w": w} for (a, b), w in pairs.items()]
    ).consume()
    tx.run(SUBTRACT_MENTIONS, rows=[{"id": e, "n": n} for e, n in mentions.items()]).consume()
    tx.run(DELETE_DOCUMENTS, ids=ids).consume()
    tx.run(DELETE_ORPHANS, ids=sorted(mentions)).consume()


def _add(
    tx: ManagedTransaction,
    docs: Sequence[DocumentWrite],
    entities: Sequence[dict[str, Any]],
    contexts: Mapping[str, tuple[np.ndarray, int]],
    max_pair_entities: int,
) -> None:
    chunk_entities = {cid: counts for d in docs for cid, counts in d.mentions.items()}
    pairs = cooccurrence_pairs(chunk_entities, max_pair_entities)
    write_entities_and_pairs(
        tx, entities, [{"a": a, "b": b, "w": w} for (a, b), w in pairs.items()]
    )
    if contexts:
        stored = {
            r["id"]: (np.asarray(r["context"], np.float32), int(r["count"]))
            for r in tx.run(READ_CONTEXTS, ids=sorted(contexts))
        }
        rows = []
        for eid, (total, count) in contexts.items():
            old_mean, old_count = stored.get(eid, (np.zeros_like(total), 0))
            mean = (old_mean * old_count + total) / (old_count + count)
            rows.append(
                {"id": eid, "context": [float(x) for x in mean], "count": old_count + count}
            )
        tx.run(SET_CONTEXTS, rows=rows).consume()
    tx.run(
        CREATE_DOCUMENTS,
        rows=[
            {
                "id": d.id,
                "hash": d.hash,
                "title": d.title,
                "chunks": [{"id": cid, "position": pos} for cid, pos in d.chunks],
            }
            for d in docs
        ],
    ).consume()
    tx.run(
        CREATE_MENTIONS,
        rows=[
            {"chunk": cid, "entity": eid, "n": n}
            for cid, counts in chunk_entities.items()
            for eid, n in counts.items()
        ],
    ).consume()


def write_entities_and_pairs(
    tx: ManagedTransaction, rows: Sequence[Mapping[str, Any]], pairs: Sequence[Mapping[str, Any]]
) -> None:
    """Add entity rows (id, name, type, key, aliases, n) and co-occurrence rows (a, b, w; each
    pair once): new entities are created, existing ones get the mentions and aliases added;
    a pair is created outright when an endpoint is new here, merged otherwise."""
    existing = {
        record["id"] for record in tx.run(EXISTING_ENTITIES, ids=[row["id"] for row in rows])
    }
    new_rows = [row for row in rows if row["id"] not in existing]
    new = {row["id"]: i for i, row in enumerate(new_rows)}
    both_new = [
        {"a": new[p["a"]], "b": new[p["b"]], "w": p["w"]}
        for p in pairs
        if p["a"] in new and p["b"] in new
    ]
    if both_new:
        tx.run(CREATE_ENTITIES_AND_PAIRS, rows=new_rows, pairs=both_new).consume()
    elif new_rows:
        tx.run(CREATE_ENTITIES, rows=new_rows).consume()
    if existing:
        tx.run(UPDATE_ENTITIES, rows=[row for row in rows if row["id"] in existing]).consume()
    one_new = [p for p in pairs if (p["a"] in new) != (p["b"] in new)]
    known = [p for p in pairs if p["a"] not in new and p["b"] not in new]
    if one_new:
        tx.run(CREATE_COOCCURRENCE, rows=one_new).consume()
    if known:
        tx.run(ADD_COOCCURRENCE, rows=known).consume()
