"""Tier 1: document-level access control — ACLs read from every source, tagged into real
LanceDB and BM25 indexes, enforced by both retrievers, the graph fusion and the checks of
document and chunk reads; fail-closed for what is unknown."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from slipway.access import (
    ACL_KEY,
    EVERY_DOCUMENT,
    EVERYONE,
    UNSET,
    AclError,
    Reader,
    acl_tags,
    may_read,
    open_to_all,
    parse_acl,
)
from slipway.documents import read_corpus
from slipway.documents.readers import CsvColumns
from slipway.retrieval.dense import lance_where, matches, metadata_tags
from slipway.retrieval.hybrid import HybridSearcher
from slipway.retrieval.index import (
    ChunkHit,
    chunk_metadata,
    document_hashes,
    group_by_document,
    open_published,
    plan_refresh,
)
from slipway.retrieval.sparse import SparseIndex
from tests.unit.test_index import Refresher, make_docs


@pytest.fixture()
def refresher(tiny_onnx_embedder: Path, tmp_path: Path) -> Refresher:
    return Refresher(tmp_path, tiny_onnx_embedder)


FINANCE = Reader(frozenset({"group:finance"}))
NOBODY = Reader(frozenset())
NOBODY_DENY = Reader(frozenset(), "deny")


def test_acls_parse_from_lists_and_separated_strings() -> None:
    assert parse_acl(None) is None and parse_acl("") is None and parse_acl([" ", ""]) is None
    assert parse_acl("group:b, user:a;group:b\nuser:c") == ("group:b", "user:a", "user:c")
    assert parse_acl(["user:a", " *"]) == ("*", "user:a")
    for bad in (3, {"a": 1}, ["ok", 2], "x" * 201, [UNSET]):
        with pytest.raises(AclError):
            parse_acl(bad, "row 1 acl")


def test_who_may_read_what() -> None:
    assert may_read(("group:finance",), {"group:finance", "user:x"}, "deny")
    assert not may_read(("group:finance",), {"group:hr"}, "public")
    assert may_read((EVERYONE,), set(), "deny")  # public by its own ACL
    assert may_read(None, set(), "public") and not may_read(None, {"group:hr"}, "deny")
    assert not may_read((), {"group:hr"}, "public")  # an empty ACL: nobody
    assert may_read(("group:finance",), {EVERYONE}, "deny")  # '*' reads everything
    assert acl_tags(None) == [UNSET] and acl_tags(()) == [] and acl_tags(("a",)) == ["a"]
    assert open_to_all([None, ("*",)], "public") and not open_to_all([None], "deny")
    assert not open_to_all([("group:finance",)], "public")


def test_a_reader_adds_its_tags_and_cannot_widen_them() -> None:
    restricted = FINANCE.restrict({"lang": "en"}, open_index=False)
    assert restricted == {"lang": "en", ACL_KEY: ["*", UNSET, "group:finance"]}
    assert NOBODY_DENY.restrict(None, open_index=False) == {ACL_KEY: ["*"]}
    assert FINANCE.restrict({"lang": "en"}, open_index=True) == {"lang": "en"}
    assert EVERY_DOCUMENT.restrict(None, open_index=False) == {}
    for key in (ACL_KEY, "_private"):  # a caller's own "_acl" filter would replace its tags
        with pytest.raises(AclError, match="reserved"):
            FINANCE.restrict({key: ["group:ceo"]}, open_index=False)


def test_list_metadata_matches_any_item_in_every_store_syntax() -> None:
    meta = {"lang": "en", ACL_KEY: ["group:a", "group:b"]}
    assert metadata_tags(meta) == [f"{ACL_KEY}=group:a", f"{ACL_KEY}=group:b", "lang=en"]
    assert matches(meta, {ACL_KEY: ["group:b", "x"]}) and not matches(meta, {ACL_KEY: "x"})
    assert matches(meta, {"lang": ["en"], ACL_KEY: "group:a"})
    where = lance_where({ACL_KEY: ["group:a", "o'brien"]})
    assert where == f"array_has_any(tags, make_array('{ACL_KEY}=group:a', '{ACL_KEY}=o''brien'))"


def test_acls_come_from_jsonl_csv_and_sidecar_files(tmp_path: Path) -> None:
    text = "A document long enough to be kept by the reader of this test."
    jsonl = tmp_path / "docs.jsonl"
    rows = [
        {"id": "open", "text": text + " one"},
        {"id": "fin", "text": text + " two", "acl": ["group:finance"]},
        {"id": "both", "text": text + " three", "acl": "group:finance, user:ann"},
        {"id": "bad", "text": text + " four", "acl": 7},
        {"id": "copy", "text": text + " one", "acl": ["user:bob"]},  # same text, other readers
    ]
    jsonl.write_text("\n".join(json.dumps(r) for r in rows))
    docs = read_corpus(jsonl)
    acl = {d.id: d.acl for d in docs.documents}
    assert acl == {
        "open": None,
        "fin": ("group:finance",),
        "both": ("group:finance", "user:ann"),
        "copy": ("user:bob",),
    }
    assert "docs.jsonl:4" in docs.skipped and "acl" in docs.skipped["docs.jsonl:4"]

    csv = tmp_path / "docs.csv"
    csv.write_text(f"id,text,acl\na,{text},group:hr\nb,{text} b,\n")
    assert [d.acl for d in read_corpus(csv).documents] == [("group:hr",), None]
    with pytest.raises(ValueError, match="perms"):
        read_corpus(csv, columns=CsvColumns(acl="perms"))

    tree = tmp_path / "tree"
    (tree / "hr" / "private").mkdir(parents=True)
    (tree / "pub.txt").write_text(text)
    (tree / "hr" / ".acl").write_text("# HR only\ngroup:hr\n")
    (tree / "hr" / "a.txt").write_text(text + " a")
    (tree / "hr" / "b.txt").write_text(text + " b")
    (tree / "hr" / "b.txt.acl").write_text("user:ann, user:bob")
    (tree / "hr" / "private" / "c.md").write_text(text + " c")
    (tree / "hr" / "private" / ".acl").write_text("")  # nobody but '*'
    acl = {d.id: d.acl for d in read_corpus(tree).documents}
    assert acl == {
        "pub.txt": None,
        "hr/a.txt": ("group:hr",),
        "hr/b.txt": ("user:ann", "user:bob"),
        "hr/private/c.md": (),
    }


def test_an_acl_change_rewrites_the_document_and_tags_every_chunk(refresher: Refresher) -> None:
    docs = make_docs(4)
    first = plan_refresh(
        refresher.chunks(docs), document_hashes(docs), None, "m1", "v000001", carries_over=True
    )
    base = type("Base", (), {})
    base.embedder, base.documents, base.acl_tagged = "m1", first.documents, True
    docs[1] = docs[1].model_copy(update={"acl": ("group:finance",)})
    plan = plan_refresh(
        refresher.chunks(docs), document_hashes(docs), base, "m1", "v000002", carries_over=True
    )
    assert plan.stats.changed_docs == 1 and plan.stats.unchanged_docs == 3
    assert plan.documents["d1"].acl == ("group:finance",)
    assert {c.doc_id for c in plan.write} == {"d1"}
    assert all(chunk_metadata(c)[ACL_KEY] == ["group:finance"] for c in plan.write)
    base.acl_tagged, base.version = (
        False,
        "v000001",
    )  # a version from before ACLs: everything is written (and tagged)
    again = plan_refresh(
        refresher.chunks(docs), document_hashes(docs), base, "m1", "v000002", carries_over=True
    )
    assert again.stats.full_rebuild and "access-control" in again.stats.reason


def secret_corpus() -> list:
    docs = make_docs(12)
    for i in (1, 4, 7):
        docs[i] = docs[i].model_copy(update={"acl": ("group:finance",)})
    docs[10] = docs[10].model_copy(update={"acl": (EVERYONE,)})
    docs[11] = docs[11].model_copy(update={"acl": ()})
    return docs


def test_no_retriever_returns_a_restricted_chunk(refresher: Refresher) -> None:
    docs = secret_corpus()
    refresher.publish(refresher.refresh(docs))
    opened = open_published(refresher.index, refresher.store)
    assert opened.manifest.acl_tagged
    restricted = {"d1", "d4", "d7", "d11"}
    searcher = HybridSearcher(refresher.embedder, opened.dense, opened.sparse)
    queries = [d.text[:80] for d in docs]  # every document's own words: its chunks rank high
    n = opened.chunk_count
    for reader, hidden in (
        (NOBODY, restricted),
        (FINANCE, {"d11"}),
        (NOBODY_DENY, restricted | {f"d{i}" for i in range(10)} - {"d10"}),
        (EVERY_DOCUMENT, set()),
    ):
        assert opened.open_to_all(reader) == (reader is EVERY_DOCUMENT)
        flt = reader.restrict(None, opened.open_to_all(reader)) or None
        for name, rankings in (
            ("dense", searcher.dense_search(queries, n, flt)),
            ("sparse", searcher.sparse_search(queries, n, flt)),
            ("hybrid", searcher.search(queries, n, flt)),
        ):
            seen = {opened.doc_of(c) for ranking in rankings for c, _ in ranking}
            assert not seen & hidden, (name, reader, seen & hidden)
            assert seen == {d.id for d in docs} - hidden, (name, reader)
        for doc in docs:
            assert opened.readable(doc.id, reader) == (doc.id not in hidden)
    assert not opened.readable("no-such-doc", EVERY_DOCUMENT)  # unknown: nobody
    assert not opened.chunk_readable("d0#999", EVERY_DOCUMENT)


def test_graph_hits_outside_the_readers_documents_are_dropped(refresher: Refresher) -> None:
    docs = secret_corpus()
    refresher.publish(refresher.refresh(docs))
    opened = open_published(refresher.index, refresher.store)
    secret_chunk = next(c for c in opened.manifest.documents["d1"].chunks)

    def expander(queries: list[str], k: int) -> list[list[tuple[str, float]]]:
        return [[(secret_chunk, 9.0)] for _ in queries]  # the graph leads to a secret chunk

    searcher = HybridSearcher(None, opened.dense, opened.sparse, expander=expander)
    flt = NOBODY.restrict(None, opened.open_to_all(NOBODY))

    async def embed(queries: list[str]):  # type: ignore[no-untyped-def]
        return refresher.embedder.embed(queries)

    hits = asyncio.run(searcher.search_async(["fox dog"], 50, flt, embed=embed))[0]
    assert hits and secret_chunk not in {c for c, _ in hits}
    open_hits = asyncio.run(searcher.search_async(["fox dog"], 50, None, embed=embed))[0]
    assert secret_chunk in {c for c, _ in open_hits}  # without the filter it would be there


def test_sparse_tags_survive_a_save_and_load(tmp_path: Path) -> None:
    index = SparseIndex.build(
        ["a", "b"],
        ["fox fox", "fox dog"],
        metadata=[{ACL_KEY: ["group:x"]}, {ACL_KEY: [UNSET]}],
    )
    index.save(tmp_path / "sparse")
    loaded = SparseIndex.load(tmp_path / "sparse")
    assert [c for c, _ in loaded.search(["fox"], 5, {ACL_KEY: [UNSET]})[0]] == ["b"]
    assert {c for c, _ in loaded.search(["fox"], 5, {ACL_KEY: ["group:x", UNSET]})[0]} == {
        "a",
        "b",
    }


def test_hits_collapse_to_one_per_document_best_chunk_first() -> None:
    def hit(chunk: str, score: float) -> ChunkHit:
        doc, position = chunk.split("#")
        return ChunkHit(
            id=chunk,
            doc_id=doc,
            score=score,
            title="",
            text="",
            position=int(position),
            metadata={},
        )

    hits = [hit("a#2", 0.9), hit("b#0", 0.8), hit("a#0", 0.7), hit("c#1", 0.6), hit("a#5", 0.5)]
    grouped = group_by_document(hits, 2)
    assert [(h.id, [o.id for o in h.other_chunks or []]) for h in grouped] == [
        ("a#2", ["a#0", "a#5"]),
        ("b#0", []),
    ]
    assert len(group_by_document(hits, 10)) == 3
