"""Richer graph links and seed linking on 2WikiMultihopQA: do they raise multi-hop recall over
the graph retrieval that ships (``bench/multihop.py``)?

1. **Name-embedding linking**: a question's NER mentions that match no entity name exactly are
   linked to the entity whose name embedding (the packaged embedder) is nearest, when the
   cosine similarity reaches a threshold.
2. **Sentence-level co-occurrence**: entity-entity edges between entities named in the same
   sentence (spaCy's sentencizer), weighted by the pair's sentence count and both entities'
   inverse chunk frequency, added to the entity-chunk graph at a relative weight.
3. **Subject-verb-object links**: entity-entity edges between the subject and the objects
   (direct, attribute, prepositional) of a verb, from spaCy's dependency parse, added the
   same way.

Each is measured on all 374 questions against the entity-chunk graph (R@5 and all-gold@5 of graph
alone and of hybrid + graph at the fusion the gate chose in ``bench/multihop.py``: weight 2,
RRF k 10). None is shipped. Name-embedding linking and SVO links change nothing worth their
cost. Sentence links do best here (+0.013 R@5, +0.024 all-gold@5 at weight 0.3), but built into
the snapshot and served (tried on 2026-12-03, ``bench/multihop.py``) they gave +0.005 R@5 and
+0.011 all-gold@5, no gain on the gate's held-out nDCG@10 (0.849 against 0.850), and the
entity-entity block's fill-in more than doubled the PageRank solve (graph p50 15 -> 37 ms) and
added 17 s of factorization per version. Relation extraction through an OpenAI-compatible endpoint
is not measured here: no model worth asking runs on this machine.

    python -m bench.multihop_links
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import spacy
from scipy.sparse.linalg import splu

from bench._common import bundle_for, parser, print_machine
from bench.multihop import WIKI, build, documents_of, load_questions
from slipway.config import GraphSettings, get_settings
from slipway.embedding import OnnxEmbedder
from slipway.embedding.cache import EmbeddingCache
from slipway.graph.extraction import (
    ENTITY_TYPES,
    display_name,
    entity_key,
    extract_mentions,
    load_nlp,
    usable,
)
from slipway.graph.linking import entity_id, split_entity_id
from slipway.graph.ppr import entity_weights
from slipway.retrieval.fusion import Hit, reciprocal_rank_fusion

FUSION = {"k": 10, "weights": [1.0, 1.0, 2.0]}  # dense, sparse, graph: the gate's choice


def main() -> None:
    p = parser(__doc__ or "")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    print_machine(args.threads)
    model_dir = bundle_for("embedder", args.bundle, args.quantization).role_dir("embedder")
    embedder = OnnxEmbedder(model_dir, threads=args.threads)
    nlp = load_nlp(GraphSettings().ner_model)
    cache = EmbeddingCache(get_settings().cache_dir / "bench-multihop-embeddings.sqlite")
    questions = load_questions(0)
    texts = [str(q["text"]) for q in questions]
    with tempfile.TemporaryDirectory() as tmp:
        wiki = build("2wikimqa", WIKI, Path(tmp), model_dir, embedder, nlp, cache)
        dense = wiki.searcher.dense_search(texts, 100)
        sparse = wiki.searcher.sparse_search(texts, 100)
        chunk_texts = [wiki.opened.text_of(c) for c in wiki.retriever.graph.chunk_ids]
    cache.close()
    ppr, graph = wiki.retriever.ppr, wiki.retriever.graph

    def score(rankings: list[list[Hit]]) -> str:
        values = []
        for q, hits in zip(questions, rankings, strict=True):
            gold = q["gold"]
            assert isinstance(gold, set)
            top5 = set(documents_of(hits, wiki.opened.doc_of, 5))
            values.append((len(gold & top5) / len(gold), float(gold <= top5)))
        r5, allgold = np.mean(values, axis=0)
        return f"R@5 {r5:.4f} all-gold@5 {allgold:.4f}"

    def report(label: str, walked: list[list[Hit]]) -> None:
        fused = [
            reciprocal_rank_fusion([d, s, g], **FUSION)  # type: ignore[arg-type]
            for d, s, g in zip(dense, sparse, walked, strict=True)
        ]
        print(f"  {label:38s} graph {score(walked)} | hybrid+graph {score(fused)}", flush=True)

    mention_keys = [
        {entity_key(m.surface, m.type) for m in extract_mentions(nlp, [("q", text)])}
        for text in texts
    ]
    seeds = [ppr.seeds(t, k) for t, k in zip(texts, mention_keys, strict=True)]
    print("\n1. name-embedding linking of unmatched question mentions")
    report("exact names only (as shipped)", [ppr.search(s, 100) for s in seeds])
    names = sorted({split_entity_id(e)[1] for e in graph.entity_ids})
    known = set(names)
    started = time.perf_counter()
    name_vectors = embedder.embed(names)
    unmatched = sorted({k for keys in mention_keys for k in keys if k not in known})
    near: dict[str, tuple[str, float]] = {}
    if unmatched:
        for key, vector in zip(unmatched, embedder.embed(unmatched), strict=True):
            sims = name_vectors @ vector
            best = int(np.argmax(sims))
            near[key] = (names[best], float(sims[best]))
    asked = sum(1 for keys in mention_keys if keys - known)
    print(
        f"  {len(names)} entity names embedded in {time.perf_counter() - started:.0f}s; "
        f"{len(unmatched)} unmatched mentions in {asked} questions"
    )
    for tau in (0.95, 0.9, 0.85, 0.8):
        linked = [
            ppr.search(
                ppr.seeds(t, keys | {near[k][0] for k in keys - known if near[k][1] >= tau}), 100
            )
            for t, keys in zip(texts, mention_keys, strict=True)
        ]
        report(f"+ nearest name, cosine >= {tau}", linked)

    n_chunks, n_entities = graph.mentions.shape
    idf = entity_weights(graph.mentions)
    chunk_entity = graph.mentions @ sp.diags(idf)
    column = {e: i for i, e in enumerate(graph.entity_ids)}

    def entity_edges(pairs: dict[tuple[int, int], float]) -> sp.csr_matrix:
        """Symmetric entity-entity weights: the pair's count times both entities' idf root."""
        rows, cols = zip(*pairs, strict=True) if pairs else ((), ())
        edges = sp.csr_matrix((list(pairs.values()), (rows, cols)), shape=(n_entities,) * 2)
        return sp.diags(np.sqrt(idf)) @ (edges + edges.T) @ sp.diags(np.sqrt(idf))

    def walk_with(extra: sp.csr_matrix, share: float) -> list[list[Hit]]:
        """Graph retrieval over the entity-chunk graph plus ``share`` x ``extra`` edges."""
        adjacency = sp.bmat(
            [[None, chunk_entity], [chunk_entity.T, share * extra if share else None]],
            format="csc",
        )
        degree = np.asarray(adjacency.sum(axis=0)).ravel()
        moves = adjacency @ sp.diags(1.0 / np.where(degree > 0, degree, 1.0))
        moves = moves + sp.diags((degree == 0).astype(np.float64))
        size = n_chunks + n_entities
        lu = splu((sp.identity(size, format="csc") - ppr.damping * moves).tocsc())
        walked: list[list[Hit]] = []
        for seed in seeds:
            if not seed:
                walked.append([])
                continue
            restart = np.zeros(size)
            for c, w in seed.items():
                restart[n_chunks + c] += w
            visits = lu.solve((1.0 - ppr.damping) * restart / restart.sum())[:n_chunks]
            top = np.argsort(-visits)[:100]
            walked.append([(graph.chunk_ids[i], float(visits[i])) for i in top if visits[i] > 0])
        return walked

    def entity_of(span: Any) -> int | None:
        kind = ENTITY_TYPES.get(span.label_)
        if kind is None or not usable(display_name(span.text, kind)):
            return None
        return column.get(entity_id(kind, entity_key(span.text, kind)))

    print("\n2. sentence-level co-occurrence edges")
    started = time.perf_counter()
    sentence_nlp = load_nlp(GraphSettings().ner_model)
    sentence_nlp.add_pipe("sentencizer", first=True)
    together: dict[tuple[int, int], float] = defaultdict(float)
    for doc in sentence_nlp.pipe(chunk_texts, batch_size=64):
        for sentence in doc.sents:
            ids = sorted({c for ent in sentence.ents if (c := entity_of(ent)) is not None})
            for i, a in enumerate(ids):
                for b in ids[i + 1 :]:
                    together[(a, b)] += 1.0
    print(f"  {len(together)} entity pairs share a sentence ({time.perf_counter() - started:.0f}s)")
    same_sentence = entity_edges(together)
    for share in (0.0, 0.1, 0.3, 1.0):
        label = "none (the graph before them)" if not share else f"at weight {share:g}"
        report(f"sentence edges {label}", walk_with(same_sentence, share))

    print("\n3. dependency-based subject-verb-object links")
    started = time.perf_counter()
    parser_nlp = spacy.load(GraphSettings().ner_model, exclude=["lemmatizer", "textcat"])
    svo_pairs: dict[tuple[int, int], float] = defaultdict(float)
    for doc in parser_nlp.pipe(chunk_texts, batch_size=64):
        of_token = {t.i: ent for ent in doc.ents for t in ent}
        for token in doc:
            if token.dep_ not in ("nsubj", "nsubjpass") or token.i not in of_token:
                continue
            verb = token.head
            objects = [c for c in verb.children if c.dep_ in ("dobj", "attr", "oprd", "dative")]
            objects += [g for c in verb.children if c.dep_ == "prep" for g in c.children]
            subject = entity_of(of_token[token.i])
            for obj in objects:
                target = entity_of(of_token[obj.i]) if obj.i in of_token else None
                if subject is not None and target is not None and subject != target:
                    svo_pairs[(min(subject, target), max(subject, target))] += 1.0
    print(f"  {len(svo_pairs)} subject-object entity pairs ({time.perf_counter() - started:.0f}s)")
    svo = entity_edges(svo_pairs)
    for share in (0.1, 0.3, 1.0):
        report(f"SVO edges at weight {share:g}", walk_with(svo, share))


if __name__ == "__main__":
    main()
