"""Knowledge-graph refresh: only new and changed documents go through NER and linking; removed
documents are detached. Each batch of documents is one transaction, so a killed run leaves a
consistent graph and a re-run converges to the graph a clean run would build."""

from __future__ import annotations

import hashlib
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from pydantic import BaseModel, Field

from slipway.documents import Document
from slipway.documents.chunking import Chunk
from slipway.graph.extraction import Mention, entity_key, extract_mentions, nlp_label
from slipway.graph.linking import EmbedFn, LinkResult, entity_id, link_mentions
from slipway.graph.store import DocumentWrite, Neo4jGraph, batched

logger = logging.getLogger(__name__)

# Bump when extraction or linking changes what a document contributes: every document is then
# re-processed on the next refresh.
LINKER_VERSION = "1"


class GraphPlan(BaseModel):
    """What a refresh adds to and removes from the graph, by document id."""

    add: list[str]
    remove: list[str]
    new: int
    changed: int
    removed: int
    unchanged: int


class GraphStats(BaseModel):
    """What a refresh did and the graph's size afterwards."""

    new: int = 0
    changed: int = 0
    removed: int = 0
    unchanged: int = 0
    chunks_processed: int = 0
    mentions: int = 0
    entities_touched: int = 0
    reassigned_by_context: int = 0
    seconds: float = 0.0
    counts: dict[str, int] = Field(default_factory=dict)


def document_signatures(
    documents: Sequence[Document], chunks: Sequence[Chunk], extractor: str
) -> dict[str, str]:
    """Per document: a hash of its content, its chunks and the extractor that reads it."""
    by_doc: dict[str, list[Chunk]] = defaultdict(list)
    for chunk in chunks:
        by_doc[chunk.doc_id].append(chunk)
    signatures = {}
    for doc in documents:
        digest = hashlib.sha256(f"{LINKER_VERSION}\x00{extractor}\x00{doc.content_hash}".encode())
        for chunk in sorted(by_doc.get(doc.id, []), key=lambda c: c.position):
            digest.update(f"\x00{chunk.id}\x00{chunk.content_hash}".encode())
        signatures[doc.id] = digest.hexdigest()
    return signatures


def plan_graph_refresh(signatures: Mapping[str, str], in_graph: Mapping[str, str]) -> GraphPlan:
    """Compare the corpus with what the graph was built from."""
    new = sorted(d for d in signatures if d not in in_graph)
    changed = sorted(d for d in signatures if d in in_graph and in_graph[d] != signatures[d])
    gone = sorted(d for d in in_graph if d not in signatures)
    return GraphPlan(
        add=new + changed,
        remove=changed + gone,
        new=len(new),
        changed=len(changed),
        removed=len(gone),
        unchanged=len(signatures) - len(new) - len(changed),
    )


def _ambiguous_ids(
    graph: Neo4jGraph, mentions: Sequence[Mention]
) -> tuple[dict[str, set[str]], list[str]]:
    types_in_run: dict[str, set[str]] = defaultdict(set)
    for mention in mentions:
        types_in_run[entity_key(mention.surface, mention.type)].add(mention.type)
    stored = graph.entity_types(types_in_run)
    ids = [
        entity_id(kind, key)
        for key, kinds in stored.items()
        if len(kinds | types_in_run[key]) > 1
        for kind in kinds
    ]
    return stored, ids


def _batch_entities(link: LinkResult, chunk_ids: set[str]) -> list[dict[str, Any]]:
    """Entity rows for the chunks of one batch: mention counts of those chunks only."""
    counts: dict[str, int] = defaultdict(int)
    for cid in chunk_ids:
        for eid, n in link.chunk_entities.get(cid, {}).items():
            counts[eid] += n
    rows = [
        {
            "id": eid,
            "type": link.entities[eid].type,
            "key": link.entities[eid].key,
            "name": link.entities[eid].name,
            "aliases": link.entities[eid].aliases,
            "n": n,
        }
        for eid, n in sorted(counts.items())
    ]
    return rows


def update_graph(
    graph: Neo4jGraph,
    documents: Sequence[Document],
    chunks: Sequence[Chunk],
    nlp: Any,
    embed: EmbedFn | None = None,
    *,
    batch_docs: int = 200,
    ner_batch: int = 64,
    max_pair_entities: int = 40,
    on_batch: Callable[[int], None] | None = None,
) -> GraphStats:
    """Bring the graph in line with ``documents``: detach removed and changed documents, then
    extract, link and write new and changed ones, ``batch_docs`` documents per transaction."""
    started = time.perf_counter()
    graph.ensure_schema()
    signatures = document_signatures(documents, chunks, nlp_label(nlp))
    plan = plan_graph_refresh(signatures, graph.document_hashes())
    logger.info(
        "knowledge graph: %d new, %d changed, %d removed, %d unchanged documents",
        plan.new,
        plan.changed,
        plan.removed,
        plan.unchanged,
    )
    for ids in batched(plan.remove, batch_docs):
        graph.remove_documents(ids, max_pair_entities)
    adding = set(plan.add)
    todo = [c for c in chunks if c.doc_id in adding]
    mentions = extract_mentions(nlp, [(c.id, c.text) for c in todo], batch_size=ner_batch)
    stored_types, ambiguous = _ambiguous_ids(graph, mentions)
    link = link_mentions(
        mentions,
        {c.id: c.doc_id for c in todo},
        stored_types,
        graph.entity_contexts(ambiguous) if ambiguous else {},
        embed,
    )
    by_id = {doc.id: doc for doc in documents}
    chunks_of: dict[str, list[Chunk]] = defaultdict(list)
    for chunk in todo:
        chunks_of[chunk.doc_id].append(chunk)
    vectors_of: dict[str, list[tuple[str, np.ndarray]]] = defaultdict(list)
    for row, vector in link.vectors.items():
        vectors_of[mentions[row].chunk_id].append((link.mention_entity[row], vector))
    for number, ids in enumerate(batched(plan.add, batch_docs)):
        writes = [
            DocumentWrite(
                id=doc_id,
                hash=signatures[doc_id],
                title=by_id[doc_id].title,
                chunks=[(c.id, c.position) for c in chunks_of[doc_id]],
                mentions={
                    c.id: link.chunk_entities[c.id]
                    for c in chunks_of[doc_id]
                    if c.id in link.chunk_entities
                },
            )
            for doc_id in ids
        ]
        chunk_ids = {c for w in writes for c, _ in w.chunks}
        entity_rows = _batch_entities(link, chunk_ids)
        contexts: dict[str, tuple[np.ndarray, int]] = {}
        for cid in chunk_ids:
            for eid, vector in vectors_of.get(cid, []):
                total, count = contexts.get(eid, (np.zeros_like(vector), 0))
                contexts[eid] = (total + vector, count + 1)
        graph.add_documents(writes, entity_rows, contexts, max_pair_entities)
        if on_batch is not None:
            on_batch(number)
    return GraphStats(
        new=plan.new,
        changed=plan.changed,
        removed=plan.removed,
        unchanged=plan.unchanged,
        chunks_processed=len(todo),
        mentions=len(mentions),
        entities_touched=len(link.entities),
        reassigned_by_context=link.reassigned,
        seconds=round(time.perf_counter() - started, 3),
        counts=graph.counts(),
    )
