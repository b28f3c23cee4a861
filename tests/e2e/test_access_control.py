"""Tier 3: document-level access control on the real service. The main job indexed XQuAD with
two articles restricted (conftest's RESTRICTED); a sweep sends every route that returns or uses
document text the questions those articles answer, as a caller who may read everything first
(so the results are cached and the restricted chunks are shown to be reachable), then as
callers who may not: not one restricted chunk, document or graph entity reaches them."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import httpx

from tests.e2e.conftest import RESTRICTED, XQUAD, Server, post


def restricted_questions(per_article: int = 4, max_chars: int = 60) -> dict[str, list[str]]:
    """Short questions whose answer is in a restricted article, by article (the tiny
    generator's context holds a short question and a source or two)."""
    text = {
        row["_id"]: row["text"]
        for row in map(json.loads, (XQUAD / "queries.jsonl").read_text().splitlines())
    }
    out: dict[str, list[str]] = {title: [] for title in RESTRICTED}
    for line in (XQUAD / "qrels" / "test.tsv").read_text().splitlines()[1:]:
        query, doc, _ = line.split("\t")
        title = doc.split("#")[0]
        if (
            title in out
            and len(out[title]) < per_article
            and len(text[query]) <= max_chars
            and text[query] not in out[title]
        ):
            out[title].append(text[query])
    return out


def docs_in(body: dict[str, Any]) -> set[str]:
    """The documents a /v1/search reply shows (its hits and their grouped chunks)."""
    found = set()
    for hit in body["results"]:
        found.add(hit["doc_id"])
        for other in hit.get("other_chunks") or []:
            found.add(other["id"].rsplit("#", 1)[0])
    return found


def article(doc_id: str) -> str:
    return doc_id.split("#")[0]


SEARCHES: list[dict[str, Any]] = [
    {},
    {"graph": True},
    {"group_by": "document", "top_k": 5},
    {"top_k": 50, "rerank": False},
]


def test_no_restricted_text_reaches_an_unauthorized_caller(server: Server) -> None:
    questions = restricted_questions()
    # 1. a caller who reads everything: the restricted articles are found (and now cached)
    for title, asked in questions.items():
        for question in asked:
            for extra in SEARCHES:
                reply = post(server, "/v1/search", {"query": question, **extra}, role="admin")
                assert reply.status_code == 200, reply.text
                if "group_by" in extra:  # one hit per document, its other chunks listed
                    docs = [h["doc_id"] for h in reply.json()["results"]]
                    assert len(docs) == len(set(docs)) == extra["top_k"], docs
        shown = {
            article(d)
            for q in asked
            for d in docs_in(post(server, "/v1/search", {"query": q}, role="admin").json())
        }
        assert title in shown, (title, shown)

    # 2. callers who may not read them: not through search in any form, nor through answers
    for role, readable in (("outsider", set()), ("engineer", {"Nikola_Tesla"})):
        hidden = set(RESTRICTED) - readable
        seen: set[str] = set()
        for asked in questions.values():
            for question in asked:
                for extra in SEARCHES:
                    reply = post(server, "/v1/search", {"query": question, **extra}, role=role)
                    assert reply.status_code == 200, reply.text
                    seen |= {article(d) for d in docs_in(reply.json())}
                answer = post(
                    server,
                    "/v1/answer",
                    {"question": question, "top_k": 2, "max_new_tokens": 8, "min_relevance": -1.0},
                    role=role,
                )
                assert answer.status_code == 200, answer.text
                cited = {article(c["doc_id"]) for c in answer.json()["citations"]}
                assert not cited & hidden, (role, question, cited)
                seen |= cited
        assert not seen & hidden, (role, seen & hidden)
        assert readable <= seen, (role, readable, seen)  # what it may read, it finds

    # 3. documents by id: a restricted one is as unknown as one that does not exist
    for title in RESTRICTED:
        doc = f"{title}#0"
        reply = post(server, "/v1/summarize", {"document_ids": [doc]}, role="outsider")
        assert reply.status_code == 404, reply.text
        assert reply.json()["error"]["code"] == "document_not_found"
        assert title not in reply.text.replace(doc, "")  # nothing but the id it was given
    engineer = post(server, "/v1/summarize", {"document_ids": ["Nikola_Tesla#0"]}, role="engineer")
    assert engineer.status_code == 200, engineer.text

    # 4. a filter cannot widen what a caller reads
    sneaky = post(
        server,
        "/v1/search",
        {"query": "Tesla", "filters": {"_acl": ["group:engineering"]}},
        role="outsider",
    )
    assert sneaky.status_code == 400 and sneaky.json()["error"]["param"] == "filters"


def graph_only_restricted_entities(limit: int = 3) -> tuple[list[str], dict[str, str]]:
    """Entities every mention of which is in a restricted article (all of them), and for
    ``limit`` public entities a neighbour co-mentioned with them only in restricted chunks."""
    from slipway.graph import connect

    with connect() as graph:
        rows = graph.read(
            "MATCH (e:Entity)<-[:MENTIONS]-(c:Chunk) RETURN e.id AS entity, c.id AS chunk"
        )
        chunks: dict[str, set[str]] = {}
        for row in rows:
            chunks.setdefault(row["entity"], set()).add(article(row["chunk"]))
        secret = sorted(e for e, titles in chunks.items() if titles <= set(RESTRICTED))
        mixed: dict[str, str] = {}
        for entity, titles in sorted(chunks.items()):
            if not titles & set(RESTRICTED) or not titles - set(RESTRICTED):
                continue
            for chunk, other in graph.co_mentions(entity):
                if other.id in secret and article(chunk) in RESTRICTED:
                    mixed[entity] = other.id
                    break
            if len(mixed) >= limit:
                break
    return secret, mixed


def test_the_graph_tells_no_restricted_entity(server: Server) -> None:
    secret, mixed = graph_only_restricted_entities(limit=10)
    assert secret, "the restricted articles mention entities of their own"

    def lookup(name: str, role: str) -> httpx.Response:
        return httpx.get(
            f"{server.base}/v1/graph/entities/{quote(name, safe='')}",
            params={"limit": 50},
            headers=server.headers(role),
            timeout=60,
        )

    for entity in secret[:3]:
        assert lookup(entity, "admin").status_code == 200
        reply = lookup(entity, "outsider")
        assert reply.status_code == 404, (entity, reply.text)
    for entity, neighbour in mixed.items():
        admin = lookup(entity, "admin").json()["entities"][0]
        outsider = lookup(entity, "outsider").json()["entities"][0]
        assert neighbour in {n["id"] for n in admin["neighbours"]} or len(admin["neighbours"]) == 50
        assert neighbour not in {n["id"] for n in outsider["neighbours"]}, (entity, neighbour)
        assert outsider["mentions"] < admin["mentions"]  # counted over what it may read

    # nearest entities by graph embedding: an outsider neither asks about nor is told of
    # an entity known only from restricted articles
    def similar(entity: str, role: str) -> httpx.Response:
        return httpx.get(
            f"{server.base}/v1/graph/entities/{quote(entity, safe='')}/similar",
            params={"limit": 50},
            headers=server.headers(role),
            timeout=60,
        )

    told = 0
    for entity in secret[:3]:
        assert similar(entity, "outsider").status_code == 404, entity
    for entity in mixed:
        admin_near = {e["id"] for e in similar(entity, "admin").json()["similar"]}
        outsider_near = {e["id"] for e in similar(entity, "outsider").json()["similar"]}
        assert not outsider_near & set(secret), entity
        told += len(admin_near & set(secret))
    assert told, "the admin's answers name restricted entities (else this proves nothing)"


def test_the_langchain_retriever_reads_as_its_key(server: Server) -> None:
    from slipway.integrations.langchain import SlipwayRetriever

    question = restricted_questions(1)["Nikola_Tesla"][0]
    for role, expect in (("engineer", True), ("outsider", False)):
        retriever = SlipwayRetriever(base_url=server.base, api_key=server.keys[role], k=10)
        found = {article(d.metadata["doc_id"]) for d in retriever.invoke(question)}
        assert ("Nikola_Tesla" in found) == expect, (role, found)
        assert "Genghis_Khan" not in found


def test_rerank_needs_a_re_ranker_and_tokenize_counts(server: Server) -> None:
    reply = post(server, "/v1/rerank", {"query": "q", "documents": ["a", "b"]}, role="search")
    assert reply.status_code == 404 and reply.json()["error"]["code"] == "model_not_found"
    bad = post(server, "/v1/rerank", {"query": "q"}, role="search")
    assert bad.status_code == 400
    reply = post(
        server,
        "/v1/tokenize",
        {"input": ["Hello world", "Hi"], "return_token_strs": True},
        role="embed",
    )
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["count"] == sum(r["count"] for r in body["results"]) > 2
    assert len(body["results"][0]["token_strs"]) == body["results"][0]["count"]
    assert body["max_model_len"] and body["kind"] == "generation"
    emb = post(server, "/v1/tokenize", {"input": "Hello", "kind": "embedding"}, role="embed")
    assert emb.status_code == 200 and emb.json()["max_model_len"] > 0
