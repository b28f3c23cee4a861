"""Graph retrieval on multi-hop questions (2WikiMultihopQA, ``../shared/data/2wikimqa``) and the
index gate's decision on single-hop sets (Cranfield, XQuAD-en).

Each corpus goes through the real index path: refresh (packaged ONNX embedder, LanceDB, BM25),
then the version's graph snapshot as the index pipeline writes it (spaCy NER linked into
entities, page titles as PAGE entities), then the graph retriever the service uses (question
NER and page-title lookup seed Personalized PageRank). For every set the gate
(``graph_gate``) decides on a seeded half of the judged queries, as the index pipeline decides
on its evaluation set, and the change it brings is measured on the other half (0 when it keeps
the graph off): ``cranfield_delta``, ``xquad_delta`` (nDCG@10).

On 2WikiMultihopQA: R@2, R@5 (share of the gold passages in the top 5 documents) and
all-gold@5 per question type for BM25, dense, hybrid, graph alone and hybrid + graph at each
weight the gate tries; the RESULT line's ``*_hybrid_graph`` at the weight the gate chose on
its dev half; build times; graph-path latency (question NER, seed lookup, PageRank) p50/p99.

    python -m bench.multihop [--queries N] [--sets cranfield,xquad_en]

Embeddings are cached in the Slipway cache directory, so a second run embeds nothing.
"""

from __future__ import annotations

import json
import logging
import random
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench._common import DATA, bundle_for, parser, print_machine, published_index
from slipway.config import GraphSettings, IndexSettings, get_settings
from slipway.documents import read_corpus
from slipway.documents.chunking import chunk_documents, load_tokenizer
from slipway.embedding import OnnxEmbedder
from slipway.embedding.cache import EmbeddingCache
from slipway.graph.extraction import load_nlp
from slipway.graph.snapshot import GraphRetriever, SnapshotInfo, build_snapshot
from slipway.retrieval.evaluation import (
    GRAPH_FUSIONS,
    WITH_GRAPH,
    JudgedQueries,
    evaluate_searcher,
    graph_gate,
)
from slipway.retrieval.fusion import Hit
from slipway.retrieval.hybrid import FusionConfig, HybridSearcher
from slipway.retrieval.index import GraphGate, OpenIndex

WIKI = DATA / "2wikimqa"
SETS = {"cranfield": DATA / "cranfield", "xquad_en": DATA / "xquad_en" / "beir"}
METHODS = ("bm25", "dense", "hybrid", "graph", "+graph")  # the last: one per fusion tried


def load_questions(limit: int) -> list[dict[str, object]]:
    """Questions with their type and gold document ids."""
    gold: dict[str, set[str]] = defaultdict(set)
    for line in (WIKI / "qrels" / "test.tsv").read_text().splitlines()[1:]:
        query, doc, _ = line.split("\t")
        gold[query].add(doc)
    rows = [json.loads(line) for line in (WIKI / "queries.jsonl").read_text().splitlines()]
    out = [
        {"id": r["_id"], "text": r["text"], "type": r["metadata"]["type"], "gold": gold[r["_id"]]}
        for r in rows
        if gold[r["_id"]]
    ]
    return out[:limit] if limit else out


def documents_of(hits: Sequence[Hit], doc_of: Callable[[str], str], k: int) -> list[str]:
    """The first ``k`` distinct documents of chunk ``hits``."""
    out: list[str] = []
    for chunk, _ in hits:
        doc = doc_of(chunk)
        if doc not in out:
            out.append(doc)
            if len(out) == k:
                break
    return out


def split(ids: Sequence[str], seed: int = 0) -> tuple[set[str], set[str]]:
    """A seeded half of ``ids`` (the gate's development queries) and the other half (held out:
    the figures the gate's decision is judged by)."""
    order = list(ids)
    random.Random(seed).shuffle(order)
    half = len(order) // 2
    return set(order[:half]), set(order[half:])


def subset(judged: JudgedQueries, ids: set[str]) -> JudgedQueries:
    """The judged queries among ``ids``."""
    return JudgedQueries(
        {q: t for q, t in judged.queries.items() if q in ids},
        {q: r for q, r in judged.qrels.items() if q in ids},
    )


@dataclass
class Built:
    """An indexed corpus with its graph snapshot and retriever."""

    opened: OpenIndex
    retriever: GraphRetriever
    searcher: HybridSearcher
    index_s: float
    graph_s: float
    info: SnapshotInfo


def build(
    name: str,
    root: Path,
    tmp: Path,
    model_dir: Path,
    embedder: OnnxEmbedder,
    nlp: Any,
    cache: EmbeddingCache,
) -> Built:
    """Index ``root`` with the real refresh, write its graph snapshot as the index pipeline
    does, and open the graph retriever (PageRank factors included in the graph time)."""
    docs = read_corpus(root, min_chars=1).documents
    chunks = chunk_documents(docs, load_tokenizer(model_dir), 200, 32).chunks
    opened, index_s = published_index(tmp, name, chunks, docs, embedder, model_dir, cache)
    started = time.perf_counter()
    version_dir = opened.index.version_dir(opened.version)
    info = build_snapshot(version_dir, chunks, nlp, progress=False)
    retriever = GraphRetriever.load(version_dir, nlp)
    graph_s = time.perf_counter() - started
    searcher = HybridSearcher(embedder, opened.dense, opened.sparse)
    print(
        f"{name}: {len(docs)} documents -> {len(chunks)} chunks; index built in {index_s:.0f}s; "
        f"graph: {info.entities} entities, {info.edges} chunk-entity edges, built in "
        f"{graph_s:.0f}s (NER {info.seconds:.0f}s, PageRank factors)"
    )
    return Built(opened, retriever, searcher, index_s, graph_s, info)


def gate_then_test(built: Built, judged: JudgedQueries, min_gain: float) -> tuple[GraphGate, float]:
    """The index gate decided on a seeded half of the judged queries; the nDCG@10 change it
    brings on the other half (0 when it keeps the graph off)."""
    dev, test = split(sorted(judged.queries))
    doc_of = built.opened.doc_of
    graph = built.retriever.search_many
    gate = graph_gate(
        evaluate_searcher(built.searcher, subset(judged, dev), doc_of, graph=graph), min_gain
    )
    held = evaluate_searcher(
        built.searcher,
        subset(judged, test),
        doc_of,
        graph=graph,
        fusions=[(gate.weight, gate.rrf_k)],
    )
    with_graph = held[WITH_GRAPH]["ndcg@10"]
    print(
        f"  gate on {len(dev)} dev queries: {gate.reason}\n"
        f"  held-out {len(test)} queries: hybrid nDCG@10 {held['hybrid']['ndcg@10']:.4f}, "
        f"hybrid+graph {with_graph:.4f} (weight {gate.weight:g}, k {gate.rrf_k}), graph alone "
        f"{held['graph']['ndcg@10']:.4f}"
    )
    return gate, (with_graph - held["hybrid"]["ndcg@10"]) if gate.enabled else 0.0


def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument("--queries", type=int, default=0, help="The first N questions (0 = all).")
    p.add_argument("--sets", default="cranfield,xquad_en", help="Single-hop sets for the gate.")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    print_machine(args.threads)
    if not (WIKI / "corpus.jsonl").is_file():
        raise SystemExit(f"{WIKI} not found; the benchmark needs ../shared/data.")
    model_dir = bundle_for("embedder", args.bundle, args.quantization).role_dir("embedder")
    embedder = OnnxEmbedder(model_dir, threads=args.threads)
    nlp = load_nlp(GraphSettings().ner_model)
    min_gain = IndexSettings().graph_min_gain
    cache = EmbeddingCache(get_settings().cache_dir / "bench-multihop-embeddings.sqlite")
    deltas: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        wiki = build("2wikimqa", WIKI, Path(tmp), model_dir, embedder, nlp, cache)
        judged = JudgedQueries.from_beir(WIKI)
        questions = load_questions(args.queries)
        gate, _ = gate_then_test(wiki, subset(judged, {str(q["id"]) for q in questions}), min_gain)
        graph_ms: list[float] = []

        def walk(queries: Sequence[str], k: int) -> list[list[Hit]]:
            out = []
            for q in queries:
                t = time.perf_counter()
                out.append(wiki.retriever.search(q, k))
                graph_ms.append((time.perf_counter() - t) * 1000)
            return out

        plain = wiki.searcher
        texts = [str(q["text"]) for q in questions]
        n = plain.fusion.candidates
        rankings = {"bm25": plain.sparse_search(texts, n), "dense": plain.dense_search(texts, n)}
        rankings["graph"] = walk(texts, n)
        rankings["hybrid"] = [
            plain.fuse(d, s) for d, s in zip(rankings["dense"], rankings["bm25"], strict=True)
        ]
        for w, k in sorted({*GRAPH_FUSIONS, (gate.weight, gate.rrf_k)}, key=lambda v: (v[1], v[0])):
            fused = HybridSearcher(
                None,
                wiki.opened.dense,
                wiki.opened.sparse,
                FusionConfig(graph_weight=w, rrf_k=k),
            )
            rankings[f"+graph w{w:g} k{k}"] = [
                fused.fuse(d, s, g)
                for d, s, g in zip(
                    rankings["dense"], rankings["bm25"], rankings["graph"], strict=True
                )
            ]
        doc_of = wiki.opened.doc_of
        for name in args.sets.split(","):
            root = SETS[name]
            built = build(name, root, Path(tmp) / name, model_dir, embedder, nlp, cache)
            _, deltas[name] = gate_then_test(built, JudgedQueries.from_beir(root), min_gain)
    cache.close()

    by_type: dict[str, dict[str, list[tuple[float, float, float]]]] = defaultdict(
        lambda: defaultdict(list)
    )
    methods = [*METHODS[:-1], *(m for m in rankings if m.startswith("+graph"))]
    for n, q in enumerate(questions):
        gold = q["gold"]
        assert isinstance(gold, set)
        for method in methods:
            top5 = documents_of(rankings[method][n], doc_of, 5)
            r2 = len(gold & set(top5[:2])) / len(gold)
            r5 = len(gold & set(top5)) / len(gold)
            for kind in (str(q["type"]), "all"):
                by_type[kind][method].append((r2, r5, float(gold <= set(top5))))
    print(f"\n2wikimqa: {len(questions)} questions; R@2 / R@5 / all-gold@5 by type")
    print(f"{'type':18s} {'n':>4s} " + " ".join(f"{m:>20s}" for m in methods))
    for kind in sorted(by_type, key=lambda t: (t == "all", t)):
        cells = []
        for method in methods:
            values = np.asarray(by_type[kind][method])
            r2, r5, allgold = values.mean(axis=0)
            cells.append(f"{r2:.3f}/{r5:.3f}/{allgold:.3f}")
        count = len(by_type[kind][METHODS[0]])
        print(f"{kind:18s} {count:4d} " + " ".join(f"{c:>20s}" for c in cells))
    p50, p99 = float(np.percentile(graph_ms, 50)), float(np.percentile(graph_ms, 99))
    print(f"graph path (question NER, seed lookup, PageRank): p50 {p50:.2f} ms p99 {p99:.2f} ms")
    overall = {m: np.asarray(by_type["all"][m]).mean(axis=0) for m in methods}
    chosen = f"+graph w{gate.weight:g} k{gate.rrf_k}"
    state = "on" if gate.enabled else "off"
    print(
        f"2wikimqa: the gate chose weight {gate.weight:g}, RRF k {gate.rrf_k} on the dev half "
        f"(graph {state}); '+graph wW kK' is hybrid + graph at weight W, RRF k K"
    )
    print(
        f"RESULT r5_hybrid={overall['hybrid'][1]:.4f} "
        f"r5_hybrid_graph={overall[chosen][1]:.4f} "
        f"allgold5_hybrid={overall['hybrid'][2]:.4f} "
        f"allgold5_hybrid_graph={overall[chosen][2]:.4f} graph_p50_ms={p50:.2f} "
        + " ".join(f"{name.split('_')[0]}_delta={d:+.4f}" for name, d in deltas.items())
    )


if __name__ == "__main__":
    main()
