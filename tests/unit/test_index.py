"""Tier 1: versioned indexes on a real LanceDB store with a real (tiny) ONNX embedder."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from slipway.documents import Document, content_hash
from slipway.documents.chunking import chunk_documents, load_tokenizer
from slipway.embedding import OnnxEmbedder, model_fingerprint
from slipway.embedding.cache import EmbeddingCache
from slipway.retrieval.dense import LanceDBStore, lance_where, matches
from slipway.retrieval.evaluation import (
    QualityGateError,
    publish_gated,
    quality_gate,
    record_metrics,
)
from slipway.retrieval.hybrid import FusionConfig, HybridSearcher
from slipway.retrieval.index import (
    EmbedderMismatch,
    IndexDir,
    IndexVersion,
    document_hashes,
    indexed_text,
    open_published,
    paired_version,
    plan_refresh,
    refresh_index,
)

WORDS = [
    "fox",
    "dog",
    "ocean",
    "paris",
    "france",
    "city",
    "capital",
    "onnx",
    "runtime",
    "model",
    "cpu",
    "quick",
    "lazy",
    "brown",
    "slipway",
    "language",
    "world",
    "small",
    "test",
    "corpus",
    "tokenizer",
    "sentence",
]


def make_docs(n: int, seed: int = 0, prefix: str = "d") -> list[Document]:
    rng = np.random.default_rng(seed)
    docs = []
    for i in range(n):
        text = " ".join(rng.choice(WORDS, size=int(rng.integers(20, 90))))
        lang = "en" if i % 2 else "fr"
        docs.append(
            Document(
                id=f"{prefix}{i}",
                title=f"t{i}",
                text=text,
                content_hash=content_hash(f"t{i}", text),
                metadata={"lang": lang},
            )
        )
    return docs


class Refresher:
    """Runs refreshes of one index with the tiny embedder, counting embedded texts."""

    def __init__(self, root: Path, model_dir: Path, name: str = "test") -> None:
        self.index = IndexDir(root, name)
        self.store = LanceDBStore(self.index.lance_dir)
        self.embedder = OnnxEmbedder(model_dir, threads=1)
        self.tokenizer = load_tokenizer(model_dir)
        self.cache = EmbeddingCache(root / "cache.sqlite")
        self.fingerprint = model_fingerprint(model_dir)

    def chunks(self, docs: list[Document]):
        return chunk_documents(docs, self.tokenizer, chunk_tokens=32, overlap_tokens=4).chunks

    def refresh(self, docs: list[Document], fingerprint: str | None = None) -> IndexVersion:
        return refresh_index(
            self.index,
            self.store,
            self.chunks(docs),
            document_hashes(docs),
            self.embedder,
            fingerprint or self.fingerprint,
            self.cache,
            embedder_dir=str(self.embedder.model_dir),
            write_batch=16,
        )

    def publish(self, version: IndexVersion, retain: int = 3) -> str:
        return publish_gated(self.index, self.store, version.version, margin=0.01, retain=retain)


@pytest.fixture()
def refresher(tiny_onnx_embedder: Path, tmp_path: Path) -> Refresher:
    return Refresher(tmp_path, tiny_onnx_embedder)


def test_plan_counts_new_changed_removed_unchanged(refresher: Refresher) -> None:
    docs = make_docs(6)
    chunks = refresher.chunks(docs)
    first = plan_refresh(chunks, document_hashes(docs), None, "m1", "v000001", carries_over=True)
    assert first.stats.full_rebuild and first.stats.new_docs == 6 and not first.delete
    edited = [*docs[:4], docs[4].model_copy(update={"text": docs[4].text + " extra words"})]
    edited += make_docs(1, seed=9, prefix="new")
    base = type("Base", (), {})  # only the fields plan_refresh reads
    base.embedder, base.documents, base.acl_tagged = "m1", first.documents, True
    plan = plan_refresh(
        refresher.chunks(edited), document_hashes(edited), base, "m1", "v000002", carries_over=True
    )
    s = plan.stats
    assert (s.new_docs, s.changed_docs, s.removed_docs, s.unchanged_docs) == (1, 1, 1, 4)
    assert set(plan.delete) == set(first.documents["d4"].chunks) | set(first.documents["d5"].chunks)
    assert {c.doc_id for c in plan.write} == {"d4", "new0"}
    assert plan.documents["d0"].version == "v000001" and plan.documents["d4"].version == "v000002"
    other = plan_refresh(refresher.chunks(edited), {}, base, "m2", "v000002", carries_over=True)
    assert other.stats.full_rebuild and "embedder changed" in other.stats.reason
    assert len(other.write) == len(refresher.chunks(edited)) and not other.delete
    no_carry = plan_refresh(refresher.chunks(edited), {}, base, "m1", "v000002", carries_over=False)
    assert len(no_carry.write) == len(refresher.chunks(edited)) and not no_carry.delete


def test_incremental_refresh_publish_and_gc(refresher: Refresher) -> None:
    docs = make_docs(40)
    v1 = refresher.refresh(docs)
    assert v1.changed and v1.stats.embedded == len(refresher.chunks(docs))
    assert refresher.index.published() is None  # written, not yet published
    with pytest.raises(LookupError, match="no published version"):
        open_published(refresher.index, refresher.store)
    refresher.publish(v1)
    n1 = len(refresher.chunks(docs))

    # change 2 documents, delete 1, add 1: only their chunks are embedded and written
    changed = [
        d.model_copy(update={"text": d.text + " ocean"}) if d.id in {"d3", "d7"} else d
        for d in docs
        if d.id != "d5"
    ] + make_docs(1, seed=5, prefix="n")
    v2 = refresher.refresh(changed)
    touched = [c for c in refresher.chunks(changed) if c.doc_id in {"d3", "d7", "n0"}]
    assert (v2.stats.new_docs, v2.stats.changed_docs, v2.stats.removed_docs) == (1, 2, 1)
    assert v2.stats.written_chunks == len(touched)
    assert v2.stats.embedded + v2.stats.cache_hits == len(touched)
    opened_old = open_published(refresher.index, refresher.store)
    assert opened_old.version == v1.version and opened_old.dense.count() == n1  # still serving v1
    refresher.publish(v2)
    opened = open_published(refresher.index, refresher.store)
    expected = {c.id for c in refresher.chunks(changed)}
    assert opened.version == v2.version and opened.dense.ids() == expected
    assert opened.dense.count() == len(expected)

    # nothing changed: no new version
    same = refresher.refresh(changed)
    assert not same.changed and same.version == v2.version and same.stats.embedded == 0

    # a rollback to the old embedder version later costs no embedding; a new one rebuilds all
    v3 = refresher.refresh(changed, fingerprint="another-model")
    assert v3.stats.full_rebuild and v3.stats.embedded == len(expected)
    refresher.publish(v3, retain=2)
    v4 = refresher.refresh(changed)  # back to the first embedder: all from the cache
    assert v4.stats.full_rebuild and v4.stats.embedded == 0 and v4.stats.cache_hits == len(expected)
    refresher.publish(v4, retain=2)
    assert refresher.index.pointer().history == [v4.version, v3.version]
    assert refresher.index.all_versions() == [v3.version, v4.version]  # v1, v2 collected
    with pytest.raises(LookupError):
        refresher.store.reader(v1.version)
    assert refresher.store.reader(v3.version).count() == len(expected)


def test_a_reader_only_gets_a_version_its_embedder_built(refresher: Refresher) -> None:
    docs = make_docs(12)
    v1 = refresher.refresh(docs)
    with pytest.raises(LookupError, match="no published version"):
        paired_version(refresher.index, refresher.fingerprint)
    refresher.publish(v1)
    assert paired_version(refresher.index, refresher.fingerprint) == v1.version
    # a new embedder's version is published (blue/green): the old embedder keeps its pair,
    # the new one takes the new version, a third is refused with the reason
    v2 = refresher.refresh(docs, fingerprint="new-model")
    refresher.publish(v2)
    assert refresher.index.published() == v2.version
    assert paired_version(refresher.index, refresher.fingerprint) == v1.version
    assert paired_version(refresher.index, "new-model") == v2.version
    with pytest.raises(EmbedderMismatch, match="no published or retained version") as refused:
        paired_version(refresher.index, "third-model")
    assert v2.version in str(refused.value)
    # once the old pair's version is collected, the old embedder has nothing to serve
    v3 = refresher.refresh(make_docs(13), fingerprint="new-model")
    refresher.publish(v3, retain=2)
    with pytest.raises(EmbedderMismatch):
        paired_version(refresher.index, refresher.fingerprint)


def test_refresh_records_the_model_and_shows_progress(
    refresher: Refresher, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="slipway.retrieval.index")
    docs = make_docs(5)
    version = refresh_index(
        refresher.index,
        refresher.store,
        refresher.chunks(docs),
        document_hashes(docs),
        refresher.embedder,
        refresher.fingerprint,
        refresher.cache,
        write_batch=4,
        model=("slipway", "7"),
    )
    manifest = refresher.index.manifest(version.version)
    assert (manifest.model_name, manifest.model_version) == ("slipway", "7")
    # no terminal here: instead of a bar, a line per written batch
    lines = [r.getMessage() for r in caplog.records if "chunks (" in r.getMessage()]
    assert any("wrote 4/" in line for line in lines), lines


def test_filters_and_hybrid_search_on_a_published_version(refresher: Refresher) -> None:
    docs = make_docs(30)
    refresher.publish(refresher.refresh(docs))
    opened = open_published(refresher.index, refresher.store)
    searcher = HybridSearcher(refresher.embedder, opened.dense, opened.sparse)
    hits = searcher.search(["paris capital france", "onnx runtime"], k=5)
    assert len(hits) == 2 and all(0 < len(h) <= 5 for h in hits)
    for filters in ({"lang": "en"}, {"lang": ["fr"]}, {"doc_id": ["d1", "d2"], "lang": "fr"}):
        for results in (
            searcher.search(["paris ocean"], 50, filters),
            searcher.dense_search(["paris ocean"], 50, filters),
            searcher.sparse_search(["paris ocean"], 50, filters),
        ):
            assert results[0], filters
            assert all(
                matches(opened.hydrate([h])[0].metadata | {"doc_id": opened.doc_of(h[0])}, filters)
                for h in results[0]
            )
    assert searcher.search(["paris"], 5, {"lang": "it'); DROP TABLE chunks; --"}) == [[]]
    assert lance_where({"a": "x'y"}) == "array_has_any(tags, make_array('a=x''y'))"
    with pytest.raises(ValueError, match="Filter"):
        searcher.search(["paris"], 5, {"lang": []})
    top = opened.hydrate(hits[0][:1])[0]
    assert top.text and top.doc_id and top.metadata["lang"] in {"en", "fr"}


def test_a_version_hands_back_the_vectors_it_stores(refresher: Refresher) -> None:
    docs = make_docs(12)
    refresher.publish(refresher.refresh(docs))
    opened = open_published(refresher.index, refresher.store)
    hits = opened.hydrate(
        HybridSearcher(refresher.embedder, opened.dense, opened.sparse).search(
            ["paris capital"], 4
        )[0]
    )
    wanted = [h.id for h in hits]
    stored = opened.dense.vectors([*wanted, "nowhere#0", "it's#1"])
    assert set(stored) == set(wanted)  # unknown ids (quotes too) are just absent
    fresh = refresher.embedder.embed([indexed_text(h.title, h.text) for h in hits])
    for hit, vector in zip(hits, fresh, strict=True):  # what the refresh embedded, as stored
        assert stored[hit.id].dtype == np.float32
        assert float(stored[hit.id] @ vector) == pytest.approx(1.0, abs=1e-3)
    assert opened.dense.vectors([]) == {}


def test_quality_gate_refuses_a_worse_version(refresher: Refresher) -> None:
    assert quality_gate({"hybrid": {"ndcg@10": 0.5}}, None, 0.01)[0]
    assert not quality_gate({"hybrid": {"ndcg@10": 0.48}}, {"hybrid": {"ndcg@10": 0.5}}, 0.01)[0]
    assert quality_gate({"hybrid": {"ndcg@10": 0.495}}, {"hybrid": {"ndcg@10": 0.5}}, 0.01)[0]
    docs = make_docs(10)
    v1 = refresher.refresh(docs)
    record_metrics(refresher.index, v1.version, {"hybrid": {"ndcg@10": 0.6}})
    refresher.publish(v1)
    v2 = refresher.refresh(make_docs(12, seed=3))
    record_metrics(refresher.index, v2.version, {"hybrid": {"ndcg@10": 0.4}})
    with pytest.raises(QualityGateError, match="keeps serving"):
        refresher.publish(v2)
    assert refresher.index.published() == v1.version
    assert open_published(refresher.index, refresher.store).dense.count() == len(
        refresher.chunks(docs)
    )


def test_refresh_through_pinecone_namespaces(tiny_onnx_embedder: Path, tmp_path: Path) -> None:
    """The same refresh with the Pinecone adapter (real SDK, local stand-in): every version is
    a namespace written in full, unchanged chunks come from the cache, old namespaces go."""
    pytest.importorskip("pinecone")
    from slipway.retrieval.pinecone import PineconeStore
    from tests.pinecone_standin import pinecone_standin

    with pinecone_standin(api_key="k", dimension=64) as standin:
        refresher = Refresher(tmp_path, tiny_onnx_embedder)
        refresher.store = PineconeStore("k", host=standin.host, namespace_prefix="test.")
        docs = make_docs(20)
        refresher.publish(refresher.refresh(docs))
        changed = [
            d.model_copy(update={"text": d.text + " ocean"}) if d.id == "d1" else d
            for d in docs[1:]
        ]
        v2 = refresher.refresh(changed)
        n_changed = len([c for c in refresher.chunks(changed) if c.doc_id == "d1"])
        assert v2.stats.embedded + v2.stats.cache_hits == len(refresher.chunks(changed))
        assert v2.stats.embedded <= n_changed
        refresher.publish(v2, retain=1)
        opened = open_published(refresher.index, refresher.store)
        assert opened.dense.ids() == {c.id for c in refresher.chunks(changed)}
        searcher = HybridSearcher(refresher.embedder, opened.dense, opened.sparse)
        assert searcher.search(["paris"], 3, {"lang": "en"})[0]
        assert sorted(standin.state.namespaces) == ["test.v000002"]


def test_cross_encoder_reranker_reorders_the_top_hits(
    tiny_embedder: Path, refresher: Refresher, tmp_path: Path
) -> None:
    """A real (tiny, random) cross-encoder built from a config: the re-ranked head is in the
    order of its own scores, the tail keeps the fused order."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from slipway.retrieval.rerank import CrossEncoderReranker

    path = tmp_path / "cross-encoder"
    config = BertConfig.from_pretrained(tiny_embedder, num_labels=1)
    BertForSequenceClassification(config).save_pretrained(path)
    AutoTokenizer.from_pretrained(tiny_embedder).save_pretrained(path)
    reranker = CrossEncoderReranker(path)
    docs = make_docs(30)
    refresher.publish(refresher.refresh(docs))
    opened = open_published(refresher.index, refresher.store)
    plain = HybridSearcher(refresher.embedder, opened.dense, opened.sparse)
    reranked = HybridSearcher(
        refresher.embedder,
        opened.dense,
        opened.sparse,
        fusion=FusionConfig(rerank_top=5),
        reranker=reranker,
        text_of=opened.text_of,
    )
    query = "paris capital ocean"
    before, after = plain.search([query], 12)[0], reranked.search([query], 12)[0]
    head = [c for c, _ in before[:5]]
    scores = reranker.score(query, [opened.text_of(c) for c in head])
    assert [c for c, _ in after[:5]] == [
        c for _, c in sorted(zip(scores, head, strict=True), key=lambda p: -p[0])
    ]
    assert after[5:] == before[5:]
    # the API's answer route re-ranks retrieved hits itself: the same order and scores
    from slipway.rag.search import rerank_hits

    hits = rerank_hits(reranker, query, opened.hydrate(before), 5)
    assert [(h.id, h.score) for h in hits] == after
    with pytest.raises(FileNotFoundError, match="SLIPWAY_RERANKER_PATH"):
        CrossEncoderReranker(tmp_path / "missing")
    with pytest.raises(ValueError, match="text_of"):
        HybridSearcher(refresher.embedder, opened.dense, opened.sparse, reranker=reranker)
