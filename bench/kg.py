"""Knowledge-graph benchmark, against one embedded ArcadeDB Bolt server (a fresh directory):

1. writes: the textbook approach (one auto-commit ``MERGE`` per entity and per relation, the
   name pasted into the query string) against Slipway's batched, parameterized ``UNWIND``
   statements in managed transactions, for N entities and M relations; interleaved rounds, the
   graph cleared before each. Ours reads which ids exist once per batch through the index,
   creates the new entities in bulk, and creates outright a relation with an endpoint created
   in the same transaction; only relations between existing entities need ``MERGE``;
2. NER on the Enron e-mails: ``nlp.pipe`` in batches against ``nlp()`` one text at a time,
   interleaved on alternating slices;
3. the entity graph of those e-mails (Slipway's own update path), then GNN training on it
   (features: the packaged embedder's ONNX name embeddings): seconds per epoch, link AUC.

    python -m bench.kg [--entities 10000] [--relations 20000] [--docs 2000]
"""

from __future__ import annotations

import random
import statistics
import tempfile
import time
from pathlib import Path

from bench._common import DATA, bundle_for, parser, print_machine
from slipway.config import GraphSettings
from slipway.documents import read_corpus
from slipway.documents.chunking import chunk_documents, load_tokenizer
from slipway.documents.readers import CsvColumns
from slipway.embedding import OnnxEmbedder
from slipway.graph import connect
from slipway.graph.extraction import load_nlp
from slipway.graph.gnn import GnnConfig, train_link_predictor
from slipway.graph.server import start_server, stop_server
from slipway.graph.store import Neo4jGraph, batched, write_entities_and_pairs
from slipway.graph.update import update_graph

ENRON = DATA / "enron_spam" / "enron_spam_data.csv.gz"
COLUMNS = CsvColumns(id="Message ID", text="Message", title="Subject", metadata=("Spam/Ham",))


def workload(entities: int, relations: int, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """Entity rows and distinct relation rows between them (names need no quoting)."""
    rng = random.Random(seed)
    rows = [
        {
            "id": f"PERSON:person {i:05d}",
            "type": "PERSON",
            "key": f"person {i:05d}",
            "name": f"Person {i:05d}",
            "aliases": [f"Person {i:05d}"],
            "n": 1,
        }
        for i in range(entities)
    ]
    pairs: set[tuple[int, int]] = set()
    while len(pairs) < relations:
        a, b = sorted(rng.sample(range(entities), 2))
        pairs.add((a, b))
    rels = [{"a": rows[a]["id"], "b": rows[b]["id"], "w": 1} for a, b in sorted(pairs)]
    return rows, rels


def textbook(graph: Neo4jGraph, rows: list[dict], rels: list[dict]) -> float:
    """One auto-commit statement per entity and per relation, values pasted in."""
    started = time.perf_counter()
    with graph.driver.session(database=graph.database) as session:
        for r in rows:
            session.run(
                f"MERGE (e:Entity {{id: '{r['id']}'}}) ON CREATE SET e.name = '{r['name']}', "
                f"e.type = '{r['type']}', e.key = '{r['key']}', e.aliases = ['{r['name']}'], "
                "e.mentions = 1 ON MATCH SET e.mentions = e.mentions + 1"
            ).consume()
        for r in rels:
            session.run(
                f"MATCH (a:Entity {{id: '{r['a']}'}}) MATCH (b:Entity {{id: '{r['b']}'}}) "
                "MERGE (a)-[r:CO_OCCURS]->(b) ON CREATE SET r.weight = 1 "
                "ON MATCH SET r.weight = r.weight + 1"
            ).consume()
    return time.perf_counter() - started


def batched_writes(graph: Neo4jGraph, rows: list[dict], rels: list[dict], batch: int) -> float:
    """Slipway's write path (``write_entities_and_pairs``, as a graph update uses it):
    one managed transaction per ``batch`` entities, carrying the relations whose later endpoint
    is in that batch; UNWIND statements with parameters."""
    position = {row["id"]: i for i, row in enumerate(rows)}
    by_batch: dict[int, list[dict]] = {}
    for rel in rels:
        by_batch.setdefault(max(position[rel["a"]], position[rel["b"]]) // batch, []).append(rel)
    started = time.perf_counter()
    for number, part in enumerate(batched(rows, batch)):
        graph.write(
            lambda tx, p=part, n=number: write_entities_and_pairs(tx, p, by_batch.get(n, []))
        )
    return time.perf_counter() - started


def check_graph(graph: Neo4jGraph, entities: int, relations: int) -> None:
    counts = graph.counts()
    assert counts.get("Entity") == entities and counts.get("CO_OCCURS") == relations, counts


def bench_writes(
    graph: Neo4jGraph, entities: int, relations: int, rounds: int, batch: int
) -> tuple[float, float]:
    rows, rels = workload(entities, relations)
    graph.ensure_schema()
    # A graph server is long-running: measure both paths with the JVM's JIT warm (one full
    # batched run and 2,000 textbook statements first, on other data, not timed).
    graph.clear()
    batched_writes(graph, *workload(entities, relations, seed=1), batch)
    graph.clear()
    textbook(graph, *workload(1000, 1000, seed=2))
    text_times, ours = [], []
    for round_ in range(rounds):
        for name in ("textbook", "batched") if round_ % 2 == 0 else ("batched", "textbook"):
            graph.clear()
            seconds = (
                textbook(graph, rows, rels)
                if name == "textbook"
                else batched_writes(graph, rows, rels, batch)
            )
            check_graph(graph, entities, relations)
            (text_times if name == "textbook" else ours).append(seconds)
            print(f"  round {round_} {name:9s}: {seconds:7.2f} s")
    graph.clear()
    return statistics.median(text_times), statistics.median(ours)


def entity_rate(graph: Neo4jGraph, entities: int, batch: int, rounds: int = 3) -> float:
    """Entities per second of the batched path alone (no relations), median of ``rounds``."""
    rows, _ = workload(entities, 0, seed=3)
    times = []
    for _ in range(rounds):
        graph.clear()
        times.append(batched_writes(graph, rows, [], batch))
    graph.clear()
    return entities / statistics.median(times)


def bench_ner(nlp, texts: list[str], batch: int, slices: int = 4) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    size = max(1, len(texts) // slices)
    one, piped = 0.0, 0.0
    for i, start in enumerate(range(0, len(texts), size)):
        part = texts[start : start + size]
        order = ("one", "pipe") if i % 2 == 0 else ("pipe", "one")
        for how in order:
            t0 = time.perf_counter()
            if how == "one":
                for text in part:
                    nlp(text)
                one += time.perf_counter() - t0
            else:
                for _ in nlp.pipe(part, batch_size=batch):
                    pass
                piped += time.perf_counter() - t0
    return len(texts) / one, len(texts) / piped


def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument("--entities", type=int, default=10_000)
    p.add_argument("--relations", type=int, default=20_000)
    p.add_argument(
        "--batch",
        type=int,
        default=10_000,
        help="Entities per write transaction (with their relations).",
    )
    p.add_argument("--docs", type=int, default=2000, help="Enron e-mails for NER and the GNN.")
    p.add_argument("--ner-batch", type=int, default=64)
    p.add_argument("--epochs", type=int, default=100)
    p.set_defaults(rounds=1)
    args = p.parse_args()
    print_machine(args.threads)
    with tempfile.TemporaryDirectory(prefix="slipway-bench-kg-") as tmp:
        settings = GraphSettings(graph_dir=Path(tmp) / "graph", graph_heap="2g")
        info = start_server(settings)
        print(f"server: embedded ArcadeDB at {info.uri} (pid {info.pid})")
        try:
            with connect(settings) as graph:
                run(graph, args)
        finally:
            stop_server(settings)


def run(graph: Neo4jGraph, args) -> None:  # type: ignore[no-untyped-def]
    print(
        f"\n[1] writes: {args.entities} entities + {args.relations} relations, "
        f"{args.rounds} interleaved round(s)"
    )
    slow, fast = bench_writes(graph, args.entities, args.relations, args.rounds, args.batch)
    items = args.entities + args.relations
    print(f"textbook (one MERGE per item, pasted): {slow:.2f} s ({items / slow:,.0f} items/s)")
    entities_per_s = entity_rate(graph, args.entities, args.batch)
    print(
        f"batched (UNWIND {args.batch}, parameters): {fast:.2f} s ({items / fast:,.0f} items/s; "
        f"{args.entities} entities alone: {entities_per_s:,.0f}/s)"
    )
    speedup = slow / fast

    docs = read_corpus(ENRON, "csv", columns=COLUMNS).documents[: args.docs]
    tokenizer_dir = bundle_for("embedder", args.bundle).role_dir("embedder")
    chunks = chunk_documents(docs, load_tokenizer(tokenizer_dir), 200, 32).chunks
    nlp = load_nlp(GraphSettings().ner_model)
    print(f"\n[2] NER: {len(docs)} Enron e-mails, {nlp.meta['name']} {nlp.meta['version']}")
    texts = [d.text for d in docs]
    one, piped = bench_ner(nlp, texts, args.ner_batch)
    print(
        f"nlp() one by one: {one:.1f} docs/s | nlp.pipe(batch_size={args.ner_batch}): "
        f"{piped:.1f} docs/s | ratio {piped / one:.2f}x"
    )

    print(f"\n[3] entity graph of the same e-mails ({len(chunks)} chunks) and the GNN")
    stats = update_graph(graph, docs, chunks, nlp)
    print(f"graph update: {stats.seconds:.1f} s, {stats.mentions} mentions -> {stats.counts}")
    _, names, edges, weights = graph.entity_graph()
    embedder = OnnxEmbedder(tokenizer_dir, threads=args.threads)
    features = embedder.embed(names)
    result = train_link_predictor(features, edges, weights, GnnConfig(epochs=args.epochs))
    print(
        f"GNN ({result.config.model}): {result.nodes} nodes, {result.edges} edges, "
        f"{result.epoch_seconds:.3f} s/epoch, best epoch {result.best_epoch}"
    )
    print(
        f"link AUC (held-out edges): GNN {result.test_auc:.3f} | name-embedding cosine "
        f"{result.cosine_auc:.3f} | random {result.random_auc:.3f}"
    )
    print(
        f"\nRESULT merge_speedup={speedup:.1f} batched_entities_per_s={entities_per_s:.0f} "
        f"ner_pipe_speedup={piped / one:.2f} gnn_epoch_s={result.epoch_seconds:.3f} "
        f"link_auc={result.test_auc:.3f}"
    )


if __name__ == "__main__":
    main()
