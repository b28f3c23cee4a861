"""Tier 1: IR metrics, rank fusion, the BM25 index and the LanceDB store."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from slipway.retrieval.dense import LanceDBStore
from slipway.retrieval.fusion import reciprocal_rank_fusion, weighted_fusion
from slipway.retrieval.metrics import evaluate, ndcg_at_k, read_qrels, recall_at_k
from slipway.retrieval.sparse import SparseIndex


def test_ndcg_and_recall() -> None:
    relevant = {"a": 2, "b": 1}
    assert ndcg_at_k(["a", "b", "c"], relevant) == pytest.approx(1.0)
    assert ndcg_at_k(["c", "d"], relevant) == 0.0
    swapped = ndcg_at_k(["b", "a"], relevant)
    assert 0.0 < swapped < 1.0
    assert recall_at_k(["a", "x"], relevant, 2) == 0.5
    assert evaluate({"q": ["a"], "unjudged": ["z"]}, {"q": relevant})["recall@10"] == 0.5
    with pytest.raises(ValueError, match="judgements"):
        evaluate({"x": ["a"]}, {"q": relevant})


def test_read_qrels(tmp_path: Path) -> None:
    path = tmp_path / "q.tsv"
    path.write_text("query-id\tcorpus-id\tscore\n1\td1\t2\n1\td2\t0\n2\td3\t1\n")
    assert read_qrels(path) == {"1": {"d1": 2}, "2": {"d3": 1}}


def test_fusion() -> None:
    dense = [("a", 0.9), ("b", 0.8), ("c", 0.1)]
    sparse = [("b", 12.0), ("d", 3.0)]
    rrf = reciprocal_rank_fusion([dense, sparse])
    assert rrf[0][0] == "b"  # high in both
    assert {doc for doc, _ in rrf} == {"a", "b", "c", "d"}
    weighted = weighted_fusion([dense, sparse], [1.0, 0.0])
    assert [d for d, _ in weighted][:3] == ["a", "b", "c"]


def test_sparse_index_round_trip(tmp_path: Path) -> None:
    ids = ["d1", "d2", "d3"]
    texts = [
        "boundary layer transition on a flat plate",
        "supersonic heat transfer",
        "wing flutter in transonic flow",
    ]
    index = SparseIndex.build(ids, texts)
    assert index.search(["flat plate boundary"], k=2)[0][0][0] == "d1"
    assert index.search(["zzzz unknown"], k=2) == [[]]
    filtered = SparseIndex.build(ids, texts, metadata=[{"a": "x"}, {"a": "y"}, {"a": "x"}])
    assert sorted(h[0] for h in filtered.search(["flow plate heat"], 3, {"a": "x"})[0]) == [
        "d1",
        "d3",
    ]
    assert filtered.search(["flow"], 3, {"a": "nothing"}) == [[]]
    index.save(tmp_path / "bm25")
    again = SparseIndex.load(tmp_path / "bm25")
    assert again.search(["heat transfer"], k=1)[0][0][0] == "d2"
    with pytest.raises(ValueError):
        SparseIndex.build(["a"], [])


def test_lancedb_store_versions(tmp_path: Path) -> None:
    store = LanceDBStore(tmp_path / "lance")
    vectors = np.eye(4, dtype=np.float32)
    meta = [{"doc_id": "d1"}, {"doc_id": "d1"}, {"doc_id": "d2"}, {"doc_id": "o'brien"}]
    store.stage("v1", None, 4)
    store.add("v1", ["d1#0", "d1#1", "d2#0", "o'brien#0"], vectors, meta)
    assert store.commit("v1") == "v1"
    hits = store.reader("v1").search(vectors[:1], k=2)[0]
    assert hits[0][0] == "d1#0" and hits[0][1] == pytest.approx(1.0, abs=1e-5)
    store.stage("v2", "v1", 4)
    store.delete("v2", ["d1#0", "o'brien#0"])  # quotes in ids are escaped, not executed
    store.add("v2", ["d3#0"], vectors[3:], [{"doc_id": "d3"}])
    store.commit("v2")
    again = LanceDBStore(tmp_path / "lance")  # persisted; each version reads as committed
    assert again.reader("v1").count() == 4
    assert again.reader("v2").ids() == {"d1#1", "d2#0", "d3#0"}
    store.stage("v3", "v2", 4)
    store.add("v3", ["junk#0"], vectors[:1], [{}])  # an unfinished attempt ...
    store.stage("v3", "v2", 4)  # ... is discarded when the version is staged again
    store.commit("v3")
    assert again.reader("v3").ids() == {"d1#1", "d2#0", "d3#0"}
    store.gc(["v3"])
    with pytest.raises(LookupError, match="no version 'v1'"):
        again.reader("v1")
