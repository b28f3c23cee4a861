"""Retrieval quality on the shared sets (Cranfield, XQuAD-en): BM25, dense and hybrid nDCG@10,
Recall@10/100, through the index path (refresh -> open -> search). With ``--reranker PATH`` the
hybrid ranking is also re-ranked by that cross-encoder, to measure whether it helps. Graph
retrieval and the index gate's decision on these sets: ``bench/multihop.py``.

    python -m bench.retrieval_quality [--bundle DIR] [--reranker PATH] [--sets cranfield,xquad_en]
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

from bench._common import DATA, bundle_for, parser, print_machine
from slipway.documents import read_corpus
from slipway.documents.chunking import chunk_documents, load_tokenizer
from slipway.embedding import OnnxEmbedder, model_fingerprint
from slipway.embedding.cache import EmbeddingCache
from slipway.retrieval.dense import LanceDBStore
from slipway.retrieval.evaluation import JudgedQueries, evaluate_searcher
from slipway.retrieval.hybrid import HybridSearcher
from slipway.retrieval.index import IndexDir, OpenIndex, document_hashes, refresh_index
from slipway.retrieval.rerank import CrossEncoderReranker

SETS = {"cranfield": DATA / "cranfield", "xquad_en": DATA / "xquad_en" / "beir"}


def measure(
    root: Path, model_dir: Path, reranker_path: Path | None, threads: int
) -> dict[str, dict[str, float]]:
    """Metrics of dense, sparse, hybrid (and hybrid+rerank) on one BEIR set."""
    docs = read_corpus(root, min_chars=1).documents
    chunks = chunk_documents(docs, load_tokenizer(model_dir), 256, 32).chunks
    embedder = OnnxEmbedder(model_dir, threads=threads)
    with tempfile.TemporaryDirectory() as tmp:
        index = IndexDir(Path(tmp), root.parent.name if root.name == "beir" else root.name)
        store = LanceDBStore(index.lance_dir)
        version = refresh_index(
            index,
            store,
            chunks,
            document_hashes(docs),
            embedder,
            model_fingerprint(model_dir),
            EmbeddingCache(Path(tmp) / "c.db"),
        )
        opened = OpenIndex(index, version.version, store)
        judged = JudgedQueries.from_beir(root)
        searcher = HybridSearcher(embedder, opened.dense, opened.sparse)
        metrics = evaluate_searcher(searcher, judged, opened.doc_of)
        if reranker_path is not None:
            reranked = HybridSearcher(
                embedder,
                opened.dense,
                opened.sparse,
                reranker=CrossEncoderReranker(reranker_path),
                text_of=opened.text_of,
            )
            metrics["hybrid_rerank"] = evaluate_searcher(reranked, judged, opened.doc_of)["hybrid"]
    return metrics


def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument("--reranker", type=Path, help="A local cross-encoder directory to measure.")
    p.add_argument("--sets", default="cranfield,xquad_en")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    print_machine(args.threads)
    model_dir = bundle_for("embedder", args.bundle, args.quantization).role_dir("embedder")
    result = []
    for name in args.sets.split(","):
        started = time.perf_counter()
        metrics = measure(SETS[name], model_dir, args.reranker, args.threads)
        print(f"{name} ({time.perf_counter() - started:.0f}s):")
        for kind, values in metrics.items():
            print(f"  {kind:14s} " + "  ".join(f"{k}={v:.4f}" for k, v in values.items()))
        for kind, values in metrics.items():
            label = "bm25" if kind == "sparse" else kind
            result.append(f"{name}_{label}_ndcg10={values['ndcg@10']:.4f}")
    print("RESULT " + " ".join(result))


if __name__ == "__main__":
    main()
