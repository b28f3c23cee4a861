"""Index benchmark on the Enron e-mails: full build, incremental refresh, hybrid search latency.

1. Full build: documents/s of the index refresh (embed with the ONNX artifact, write LanceDB,
   build BM25, manifest) against raw embedding of the same chunks with the same artifact; the
   raw baseline runs in two halves, before and after the build (interleaved).
2. Refresh after editing 1% and deleting 0.5% of the documents: time as a fraction of the
   full build, with the counts that prove only those chunks were embedded.
3. Hybrid search over the published index (query embedding included): single-query p50/p99,
   concurrent (ours) and sequential dense-then-sparse (baseline) interleaved per query; and
   batch queries/s.

    python -m bench.index [--docs N] [--bundle DIR] [--threads N] [--skip-quality]
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

import numpy as np

from bench._common import DATA, bundle_for, parser, print_machine
from slipway.documents import Document, content_hash, read_corpus
from slipway.documents.chunking import chunk_documents, load_tokenizer
from slipway.documents.readers import CsvColumns
from slipway.embedding import OnnxEmbedder, model_fingerprint
from slipway.embedding.cache import EmbeddingCache
from slipway.retrieval.dense import LanceDBStore
from slipway.retrieval.evaluation import publish_gated
from slipway.retrieval.hybrid import HybridSearcher
from slipway.retrieval.index import (
    IndexDir,
    chunk_text,
    document_hashes,
    open_published,
    refresh_index,
)

ENRON = DATA / "enron_spam" / "enron_spam_data.csv.gz"
COLUMNS = CsvColumns(id="Message ID", text="Message", title="Subject", metadata=("Spam/Ham",))


def edited(docs: list[Document], edit: float, drop: float, seed: int = 0) -> list[Document]:
    """``docs`` with a share ``edit`` of them changed and a share ``drop`` removed."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(docs))
    n_edit, n_drop = round(len(docs) * edit), round(len(docs) * drop)
    change, remove = set(order[:n_edit]), set(order[n_edit : n_edit + n_drop])
    out = []
    for i, doc in enumerate(docs):
        if i in remove:
            continue
        if i in change:
            text = doc.text + "\n\n(forwarded again, with a short note)"
            doc = doc.model_copy(
                update={"text": text, "content_hash": content_hash(doc.title, text)}
            )
        out.append(doc)
    return out


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument("--docs", type=int, default=0, help="Use the first N documents (0 = all).")
    p.add_argument("--queries", type=int, default=300)
    p.add_argument("--skip-quality", action="store_true", help="Skip the Cranfield figures.")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    print_machine(args.threads)
    if not ENRON.is_file():
        raise SystemExit(f"{ENRON} not found; the benchmark needs ../shared/data.")
    model_dir = bundle_for("embedder", args.bundle, args.quantization).role_dir("embedder")
    docs = read_corpus(ENRON, "csv", columns=COLUMNS).documents
    docs = docs[: args.docs] if args.docs else docs
    tokenizer = load_tokenizer(model_dir)
    started = time.perf_counter()
    chunks = chunk_documents(docs, tokenizer, 200, 32).chunks
    chunk_s = time.perf_counter() - started
    print(
        f"corpus: {len(docs)} documents -> {len(chunks)} chunks "
        f"({sum(c.n_tokens for c in chunks)} tokens), chunked in {chunk_s:.1f}s"
    )
    embedder = OnnxEmbedder(model_dir, threads=args.threads)
    fingerprint = model_fingerprint(model_dir)
    ordered = sorted(chunks, key=lambda c: -c.n_tokens)  # the same length-sorted batches as ours
    texts = [chunk_text(c) for c in ordered]
    half = len(texts) // 2

    def raw(part: list[str]) -> float:
        t = time.perf_counter()
        for start in range(0, len(part), 512):
            embedder.embed(part[start : start + 512])
        return time.perf_counter() - t

    with tempfile.TemporaryDirectory() as tmp:
        index = IndexDir(Path(tmp), "enron")
        store = LanceDBStore(index.lance_dir)
        cache = EmbeddingCache(Path(tmp) / "cache.sqlite")
        raw_s = raw(texts[:half])
        built = refresh_index(
            index, store, chunks, document_hashes(docs), embedder, fingerprint, cache
        )
        raw_s += raw(texts[half:])
        build_s = built.stats.seconds
        publish_gated(index, store, built.version, margin=0.01, retain=3)
        efficiency = raw_s / build_s
        print(
            f"full build: {build_s:.1f}s = {len(docs) / build_s:.1f} docs/s, "
            f"{len(chunks) / build_s:.1f} chunks/s; raw embedding of the same chunks "
            f"{raw_s:.1f}s = {len(chunks) / raw_s:.1f} chunks/s; efficiency {efficiency:.3f}"
        )

        changed = edited(docs, 0.01, 0.005)
        changed_chunks = chunk_documents(changed, tokenizer, 200, 32).chunks
        refreshed = refresh_index(
            index, store, changed_chunks, document_hashes(changed), embedder, fingerprint, cache
        )
        publish_gated(index, store, refreshed.version, margin=0.01, retain=3)
        s = refreshed.stats
        fraction = s.seconds / build_s
        print(
            f"refresh: {s.seconds:.2f}s = {fraction:.4f} of the full build; documents "
            f"{s.new_docs} new, {s.changed_docs} changed, {s.removed_docs} removed, "
            f"{s.unchanged_docs} unchanged; chunks written {s.written_chunks}, deleted "
            f"{s.deleted_chunks}, embedded {s.embedded}, from cache {s.cache_hits}"
        )
        noop = refresh_index(
            index, store, changed_chunks, document_hashes(changed), embedder, fingerprint, cache
        )
        print(f"unchanged refresh: {noop.stats.seconds:.2f}s, new version: {noop.changed}")

        opened = open_published(index, store)
        searcher = HybridSearcher(embedder, opened.dense, opened.sparse)
        rng = np.random.default_rng(1)
        queries = [
            d.title
            for d in rng.choice(np.array(changed, dtype=object), args.queries * 2)
            if d.title.strip()
        ][: args.queries]
        for q in queries[:20]:
            searcher.search([q], 10)  # warm-up
        ours, base = [], []
        for q in queries:
            t = time.perf_counter()
            searcher.search([q], 10)
            ours.append((time.perf_counter() - t) * 1000)
            t = time.perf_counter()
            dense = searcher.dense_search([q], 100)
            sparse = searcher.sparse_search([q], 100)
            searcher.fuse(dense[0], sparse[0])[:10]
            base.append((time.perf_counter() - t) * 1000)
        t = time.perf_counter()
        searcher.search(queries, 10)
        batch_qps = len(queries) / (time.perf_counter() - t)
        p50, p99 = percentile(ours, 50), percentile(ours, 99)
        print(
            f"search over {opened.dense.count()} chunks, {len(queries)} queries: concurrent "
            f"p50 {p50:.2f} ms p99 {p99:.2f} ms | sequential p50 {percentile(base, 50):.2f} ms "
            f"p99 {percentile(base, 99):.2f} ms | ratio p50 {percentile(base, 50) / p50:.2f}x "
            f"| batch {batch_qps:.1f} queries/s"
        )
        cache.close()

    quality = ""
    if not args.skip_quality:
        from bench.retrieval_quality import SETS, measure

        m = measure(SETS["cranfield"], model_dir, None, args.threads)
        quality = (
            f" cranfield_hybrid_ndcg10={m['hybrid']['ndcg@10']:.4f}"
            f" cranfield_bm25_ndcg10={m['sparse']['ndcg@10']:.4f}"
            f" cranfield_dense_ndcg10={m['dense']['ndcg@10']:.4f}"
        )
    print(
        f"RESULT pipeline_efficiency={efficiency:.3f} refresh_fraction={fraction:.4f} "
        f"search_p50_ms={p50:.2f} search_p99_ms={p99:.2f}{quality}"
    )


if __name__ == "__main__":
    main()
