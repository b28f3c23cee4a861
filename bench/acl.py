"""Search cost of document-level access control, on the Enron e-mails.

The e-mails are indexed (the real refresh: ONNX embedder, LanceDB, BM25) with an ACL each: two
groups drawn from ``--groups`` (default 1000). A caller holding ``--principals`` (default 100)
groups searches with its ACL tags as a pre-filter in both retrievers; the baseline is a caller
who reads everything (no filter). Both search the same queries (other e-mails' subjects),
interleaved query by query, with the query vectors computed once: the figure is the
retrieval's own cost (dense + BM25 + fusion). The same with query embedding included is
printed too. Every restricted hit is checked against the documents' ACLs.

    python -m bench.acl [--docs 4000] [--queries 300] [--principals 100] [--groups 1000]
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench._common import DATA, bundle_for, parser, print_machine, published_index
from slipway.access import EVERY_DOCUMENT, Reader
from slipway.documents import Document, read_corpus
from slipway.documents.chunking import chunk_documents, load_tokenizer
from slipway.documents.readers import CsvColumns
from slipway.embedding import OnnxEmbedder
from slipway.embedding.cache import EmbeddingCache
from slipway.retrieval.hybrid import HybridSearcher

ENRON = DATA / "enron_spam" / "enron_spam_data.csv.gz"
COLUMNS = CsvColumns(id="Message ID", text="Message", title="Subject", metadata=("Spam/Ham",))


def with_acls(docs: list[Document], groups: int, seed: int = 0) -> list[Document]:
    """``docs`` each readable by two random groups of ``groups``."""
    rng = np.random.default_rng(seed)
    return [
        d.model_copy(update={"acl": tuple(sorted({f"group:g{g}" for g in rng.choice(groups, 2)}))})
        for d in docs
    ]


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def measure(args: argparse.Namespace, model_dir: Path) -> dict[str, Any]:
    """Build the index, search as both callers, return the figures."""
    docs = read_corpus(ENRON, "csv", columns=COLUMNS).documents
    rng = np.random.default_rng(1)
    picked = rng.permutation(len(docs))
    indexed = with_acls([docs[i] for i in picked[: args.docs]], args.groups)
    queries = [t for t in (docs[i].title for i in picked[args.docs :]) if len(t.split()) >= 2][
        : args.queries
    ]
    tokenizer = load_tokenizer(model_dir)
    chunks = chunk_documents(indexed, tokenizer, 200, 32).chunks
    embedder = OnnxEmbedder(model_dir, threads=args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        cache = EmbeddingCache(Path(tmp) / "cache.sqlite")
        opened, seconds = published_index(
            Path(tmp), "acl", chunks, indexed, embedder, model_dir, cache
        )
        print(f"index: {len(indexed)} documents, {len(chunks)} chunks, built in {seconds:.0f}s")
        searcher = HybridSearcher(embedder, opened.dense, opened.sparse)
        caller = Reader(frozenset(f"group:g{g}" for g in range(args.principals)))
        flt = caller.restrict(None, opened.open_to_all(caller))
        readable = sum(opened.readable(d.id, caller) for d in indexed)
        print(
            f"caller: {args.principals} of {args.groups} groups, may read {readable} of "
            f"{len(indexed)} documents ({readable / len(indexed):.0%}); "
            f"{len(queries)} queries, top 10 of 100 candidates per retriever"
        )
        vectors = embedder.embed(queries)
        for i in range(min(20, len(queries))):  # warm-up, both paths
            searcher.search_vectors([queries[i]], vectors[i : i + 1], 10, flt)
            searcher.search_vectors([queries[i]], vectors[i : i + 1], 10)
        open_ms: list[float] = []
        acl_ms: list[float] = []
        open_e2e: list[float] = []
        acl_e2e: list[float] = []
        violations = hits = 0
        for i, query in enumerate(queries):
            pair = [
                ("open", None, open_ms, open_e2e),
                ("acl", flt, acl_ms, acl_e2e),
            ]
            if i % 2:
                pair.reverse()  # neither path always runs second
            for name, filters, retrieval, whole in pair:
                t = time.perf_counter()
                found = searcher.search_vectors([query], vectors[i : i + 1], 10, filters)[0]
                retrieval.append((time.perf_counter() - t) * 1000)
                t = time.perf_counter()
                searcher.search([query], 10, filters)
                whole.append((time.perf_counter() - t) * 1000)
                if name == "acl":
                    hits += len(found)
                    violations += sum(not opened.chunk_readable(c, caller) for c, _ in found)
                else:
                    assert all(opened.chunk_readable(c, EVERY_DOCUMENT) for c, _ in found)
        cache.close()
    return {
        "open_p50": percentile(open_ms, 50),
        "acl_p50": percentile(acl_ms, 50),
        "open_p99": percentile(open_ms, 99),
        "acl_p99": percentile(acl_ms, 99),
        "open_e2e_p50": percentile(open_e2e, 50),
        "acl_e2e_p50": percentile(acl_e2e, 50),
        "hits": hits,
        "violations": violations,
    }


def report(m: dict[str, Any]) -> float:
    """Print the figures; the ratio of the p50s (retrieval only)."""
    ratio = m["acl_p50"] / m["open_p50"]
    print(
        f"search (retrieval): no ACL p50 {m['open_p50']:.2f} ms p99 {m['open_p99']:.2f} ms | "
        f"ACL p50 {m['acl_p50']:.2f} ms p99 {m['acl_p99']:.2f} ms | ratio p50 {ratio:.3f}x"
    )
    print(
        f"search (with query embedding): no ACL p50 {m['open_e2e_p50']:.2f} ms | ACL p50 "
        f"{m['acl_e2e_p50']:.2f} ms | ratio p50 {m['acl_e2e_p50'] / m['open_e2e_p50']:.3f}x"
    )
    print(f"ACL hits returned: {m['hits']}, of which unreadable by the caller: {m['violations']}")
    return ratio


def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument("--docs", type=int, default=4000, help="E-mails indexed.")
    p.add_argument("--queries", type=int, default=300)
    p.add_argument("--principals", type=int, default=100, help="Groups the caller holds.")
    p.add_argument("--groups", type=int, default=1000, help="Groups documents draw from.")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    print_machine(args.threads)
    if not ENRON.is_file():
        raise SystemExit(f"{ENRON} not found; the benchmark needs ../shared/data.")
    model_dir = bundle_for("embedder", args.bundle, args.quantization).role_dir("embedder")
    ratio = report(measure(args, model_dir))
    print(f"RESULT acl_search_ratio={ratio:.3f}")


if __name__ == "__main__":
    main()
