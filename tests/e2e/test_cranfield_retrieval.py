"""Hybrid retrieval on Cranfield: BM25 near its published figure; hybrid beats both."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from slipway.documents import read_corpus
from slipway.embedding import OnnxEmbedder
from slipway.retrieval.dense import LanceDBStore
from slipway.retrieval.hybrid import HybridSearcher
from slipway.retrieval.metrics import evaluate, read_qrels
from slipway.retrieval.sparse import SparseIndex

pytestmark = pytest.mark.slow


def test_hybrid_beats_bm25_and_dense_on_cranfield(shared_data: Path, packaged_embedder: Path,
                                                  tmp_path: Path) -> None:
    root = shared_data / "cranfield"
    docs = read_corpus(root, min_chars=1).documents
    ids = [d.id for d in docs]
    texts = [f"{d.title}\n{d.text}".strip() for d in docs]
    qrels = read_qrels(root / "qrels" / "test.tsv")
    queries = [q for q in map(json.loads, (root / "queries.jsonl").open()) if q["_id"] in qrels]
    query_texts = [q["text"] for q in queries]

    embedder = OnnxEmbedder(packaged_embedder)
    store = LanceDBStore(tmp_path / "lance")
    store.upsert(ids, embedder.embed(texts))
    searcher = HybridSearcher(embedder, store, SparseIndex.build(ids, texts))

    def score(results: list) -> float:
        run = {q["_id"]: [doc for doc, _ in hits] for q, hits in zip(queries, results, strict=True)}
        return evaluate(run, qrels)["ndcg@10"]

    sparse = score(searcher.sparse_search(query_texts, 100))
    dense = score(searcher.dense_search(query_texts, 100))
    hybrid = score(searcher.search(query_texts, 100))
    print(f"Cranfield nDCG@10: bm25={sparse:.4f} dense={dense:.4f} hybrid={hybrid:.4f}")
    assert 0.29 <= sparse <= 0.36  # published BM25 (k1=0.9, b=0.4): 0.316; titles included here
    assert hybrid > max(sparse, dense)
