"""Retraining on the shared sets: does fine-tuning the embedder, training a re-ranker and tuning
the fusion beat the base models on queries the training never saw?

1. Cranfield: its judged queries are split 50/50 by id (seeded). The embedder is fine-tuned on
   the training half's judgements (every document scored above 0 is a positive) with hard
   negatives mined from the base model's hybrid search, a cross-encoder re-ranker is trained
   from the same backbone on the same pairs plus a few random easy negatives a query (hard ones
   alone teach it that resembling the query means irrelevant), and the fusion is tuned on the
   training half.
   The other half measures base vs fine-tuned: dense, hybrid, hybrid + re-ranker (top 50).
2. XQuAD-en: no labels are used. Synthetic questions are generated from its passages (by the
   packaged generator from ``--bundle``, or built, or by ``--generator-url``, any
   OpenAI-compatible endpoint), kept when round-trip consistent, and the embedder is fine-tuned
   on them; the real questions (``beir/``) measure base vs fine-tuned.

Search here is in memory and per document (no chunking; the documents are short): dense by
exact cosine over torch sentence-transformers embeddings, sparse by bm25s through the project's
``SparseIndex``, fused by the project's fusion. Training runs on CUDA when torch sees it, else
on the CPU; with ``--work DIR`` a killed run resumes from its checkpoints.

    python -m bench.retrain [--quick] [--sets cranfield,xquad_en] [--work DIR] [--epochs 1]
                            [--reranker-lr 1e-4] [--reranker-epochs N] [--random-negatives 4]
                            [--bundle DIR | --generator-url URL --generator-model NAME]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench._common import DATA, parser, print_machine
from slipway.models import embedder_source
from slipway.retrieval.evaluation import JudgedQueries
from slipway.retrieval.fusion import Hit
from slipway.retrieval.hybrid import FusionConfig
from slipway.retrieval.metrics import Qrels
from slipway.retrieval.sparse import SparseIndex
from slipway.training.data import (
    Pair,
    TrainingExample,
    chat_ask,
    mine_hard_negatives,
    split_ids,
    synthetic_pairs,
    training_examples,
)
from slipway.training.fusion import fuse, tune_fusion
from slipway.training.train import TrainConfig, TrainResult, finetune_embedder, train_reranker
from slipway.training.validation import Search, evaluate_variants, exact_search

CRANFIELD = DATA / "cranfield"
XQUAD = DATA / "xquad_en"
DEPTH = 100
MINE_DEPTH = 30


@dataclass(frozen=True)
class Corpus:
    """Document texts by id."""

    texts: dict[str, str]

    @classmethod
    def from_beir(cls, root: Path) -> Corpus:
        """``corpus.jsonl``'s texts (Cranfield's texts open with their title already)."""
        texts = {}
        with (root / "corpus.jsonl").open(encoding="utf-8") as handle:
            for line in handle:
                if line.strip():
                    row = json.loads(line)
                    texts[str(row["_id"])] = row["text"]
        return cls(texts)


@dataclass
class Searches:
    """Dense (one embedder) and sparse search over a corpus, per document."""

    dense: Search
    sparse: Search

    def hybrid_ids(self, fusion: FusionConfig) -> Callable[[list[str]], list[list[str]]]:
        """Ranked document ids of hybrid search (what mining and round trips retrieve with)."""

        def retrieve(queries: list[str]) -> list[list[str]]:
            dense, sparse = self.dense(queries), self.sparse(queries)
            return [[d for d, _ in fuse(a, b, fusion)] for a, b in zip(dense, sparse, strict=True)]

        return retrieve

    def rankings(self, queries: Mapping[str, str]) -> tuple[dict[str, list[Hit]], ...]:
        """Dense and sparse rankings of ``queries`` by id (what fusion tuning takes)."""
        ids, texts = list(queries), list(queries.values())
        dense, sparse = self.dense(texts), self.sparse(texts)
        return dict(zip(ids, dense, strict=True)), dict(zip(ids, sparse, strict=True))


def sparse_search(corpus: Corpus) -> Search:
    """BM25 (the project's defaults) over the corpus."""
    index = SparseIndex.build(list(corpus.texts), list(corpus.texts.values()))
    return lambda queries: index.search(list(queries), DEPTH)


def dense_search(model_dir: Path, corpus: Corpus, batch_size: int = 64) -> tuple[Search, float]:
    """Exact cosine search with the sentence-transformers model at ``model_dir``; and the
    seconds the corpus took to embed."""
    from sentence_transformers import SentenceTransformer

    from slipway.training.train import training_device

    model = SentenceTransformer(str(model_dir), device=training_device(), local_files_only=True)

    def embed(texts: list[str]) -> np.ndarray:
        return np.asarray(
            model.encode(texts, batch_size=batch_size, normalize_embeddings=True),
            dtype=np.float32,
        )

    started = time.perf_counter()
    vectors = embed(list(corpus.texts.values()))
    return exact_search(embed, list(corpus.texts), vectors, DEPTH), time.perf_counter() - started


def rows_line(name: str, metrics: Mapping[str, float]) -> str:
    """One table row."""
    return f"  {name:28s} " + "  ".join(f"{k}={v:.4f}" for k, v in metrics.items())


def print_training(label: str, result: TrainResult) -> None:
    """What a training call did, in one line."""
    resumed = f", resumed from {result.resumed_from.name}" if result.resumed_from else ""
    print(
        f"  train {label}: {result.examples} rows, {result.steps} steps, "
        f"{result.epochs:.2f} epochs in {result.seconds:.0f}s "
        f"({result.examples_per_s:.1f} rows/s), loss {result.loss or float('nan'):.4f}{resumed}"
    )


def train_config(args: argparse.Namespace, work: Path, name: str, **kw: Any) -> TrainConfig:
    """The command line's training settings, checkpointing under ``work/name``."""
    settings = {
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "learning_rate": args.lr,
        "seed": args.seed,
        "max_seq_length": args.max_seq_length,
        "negatives": args.negatives,
        "checkpoint_dir": work / "checkpoints" / name,
        "checkpoint_steps": args.checkpoint_steps,
        "max_steps": args.max_steps,
    }
    return TrainConfig.model_validate(settings | kw)


def mined_examples(
    pairs: Sequence[Pair], searches: Searches, corpus: Corpus, per_query: int
) -> list[TrainingExample]:
    """Training rows with hard negatives mined from the base model's hybrid search."""
    negatives = mine_hard_negatives(
        pairs,
        searches.hybrid_ids(FusionConfig()),
        corpus.texts,
        per_query=per_query,
        depth=MINE_DEPTH,
        skip_top=2,  # the top few unjudged documents are often relevant (Cranfield's pools)
        progress=False,
    )
    print(
        f"  hard negatives: {sum(map(len, negatives.values()))} for {len(negatives)} queries "
        f"(top {MINE_DEPTH} of base hybrid, skipping the first 2 non-positives)"
    )
    return list(training_examples(pairs, negatives, corpus.texts))


def cranfield(args: argparse.Namespace, base_dir: Path, work: Path) -> dict[str, float]:
    """Base vs fine-tuned (and re-ranked) on the held-out half of Cranfield's queries."""
    corpus = Corpus.from_beir(CRANFIELD)
    judged = JudgedQueries.from_beir(CRANFIELD)
    train_ids, held_ids = split_ids(sorted(judged.queries, key=int), 0.5, args.seed)
    if args.quick:
        train_ids, held_ids = train_ids[:30], held_ids[:40]
    train_q = {q: judged.queries[q] for q in train_ids}
    held_q = {q: judged.queries[q] for q in held_ids}
    print(
        f"cranfield: {len(corpus.texts)} docs, {len(judged.queries)} judged queries: "
        f"{len(train_q)} train / {len(held_q)} validation (seed {args.seed})"
    )
    sparse = sparse_search(corpus)
    base_dense, embed_s = dense_search(base_dir, corpus)
    print(f"  base corpus embedded in {embed_s:.0f}s")
    base = Searches(base_dense, sparse)
    pairs = [
        Pair(query_id=q, query=text, positives=sorted(judged.qrels[q]), source="labelled")
        for q, text in train_q.items()
    ]
    examples = mined_examples(pairs, base, corpus, args.negatives_per_query)
    tuned_dir, reranker_dir = work / "cranfield-embedder", work / "cranfield-reranker"
    embedder_run = finetune_embedder(
        base_dir, examples, tuned_dir, train_config(args, work, "cranfield-embedder")
    )
    print_training("embedder", embedder_run)
    reranker_run = train_reranker(
        base_dir,
        examples,
        reranker_dir,
        train_config(
            args,
            work,
            "cranfield-reranker",
            batch_size=args.reranker_batch_size,
            learning_rate=args.reranker_lr,
            epochs=args.reranker_epochs or args.epochs,
            random_negatives=args.random_negatives,
        ),
    )
    print_training("re-ranker", reranker_run)
    tuned_dense, embed_s = dense_search(tuned_dir, corpus)
    print(f"  fine-tuned corpus embedded in {embed_s:.0f}s")
    tuned = Searches(tuned_dense, sparse)
    base_choice = tune_fusion(*base.rankings(train_q), judged.qrels)
    tuned_choice = tune_fusion(*tuned.rankings(train_q), judged.qrels)
    print(
        f"  fusion tuned on the training half: base {base_choice.best.name}, "
        f"fine-tuned {tuned_choice.best.name}"
    )
    from slipway.retrieval.rerank import CrossEncoderReranker

    reranker = CrossEncoderReranker(reranker_dir, max_length=args.max_seq_length)
    started = time.perf_counter()
    table = {
        "base": evaluate_variants(held_q, judged.qrels, base.dense, base.sparse),
        "base+tuned fusion": evaluate_variants(
            held_q, judged.qrels, base.dense, base.sparse, base_choice.config()
        ),
        "fine-tuned": evaluate_variants(
            held_q,
            judged.qrels,
            tuned.dense,
            tuned.sparse,
            tuned_choice.config(),
            reranker,
            corpus.texts.__getitem__,
            args.rerank_top,
            reranked_variants=("hybrid",),
        ),
    }
    if not args.quick:
        table["base+re-ranker"] = evaluate_variants(
            held_q,
            judged.qrels,
            base.dense,
            base.sparse,
            None,
            reranker,
            corpus.texts.__getitem__,
            args.rerank_top,
            reranked_variants=("hybrid",),
        )
    print(f"  validation ({len(held_q)} queries) in {time.perf_counter() - started:.0f}s:")
    for model, variants in table.items():
        for variant, metrics in variants.items():
            print(rows_line(f"{model} {variant}", metrics))
    base_ndcg = table["base"]["hybrid"]["ndcg@10"]
    tuned_ndcg = table["fine-tuned"]["hybrid"]["ndcg@10"]
    rerank_ndcg = table["fine-tuned"]["hybrid_rerank"]["ndcg@10"]
    dense_ratio = table["fine-tuned"]["dense"]["ndcg@10"] / table["base"]["dense"]["ndcg@10"]
    print(
        f"  ratios (nDCG@10, fine-tuned / base): dense {dense_ratio:.3f}  "
        f"hybrid {tuned_ndcg / base_ndcg:.3f}  hybrid+re-ranker {rerank_ndcg / base_ndcg:.3f}"
    )
    return {
        "cranfield_base": base_ndcg,
        "cranfield_tuned": tuned_ndcg,
        "cranfield_rerank": rerank_ndcg,
        "train_s": embedder_run.seconds + reranker_run.seconds,
    }


def generator_ask(args: argparse.Namespace) -> tuple[Callable[[str], str], str]:
    """The synthetic-question writer: ``--generator-url`` (OpenAI-compatible) or the bundle's
    packaged generator in this process; and its name."""
    if args.generator_url:
        from slipway.evaluation.judge import OpenAIChat

        chat: Any = OpenAIChat(
            args.generator_url, args.generator_model, os.environ.get("SLIPWAY_GENERATOR_API_KEY")
        )
        return chat_ask(chat), chat.name
    from tokenizers import Tokenizer

    from bench._common import bundle_for
    from slipway.evaluation.inprocess import InProcessGenerator
    from slipway.evaluation.judge import GeneratorChat
    from slipway.generation import context_length, load_generator

    bundle = bundle_for("generator", args.bundle)
    model_dir = bundle.role_dir("generator")
    generator = InProcessGenerator(
        load_generator(model_dir, bundle.runtime("generator"), args.threads),
        context_length(model_dir),
    )
    name = f"packaged generator ({model_dir.name}, in-process)"
    chat = GeneratorChat(
        generator.complete_sync,
        Tokenizer.from_file(str(model_dir / "tokenizer.json")),
        generator.context,
        False,
        name,
    )
    return chat_ask(chat), name


def xquad(args: argparse.Namespace, base_dir: Path, work: Path) -> dict[str, float]:
    """Base vs fine-tuned on synthetic questions only, measured on XQuAD's real questions."""
    from slipway.prompts import load_file
    from slipway.training.data import SYNTHETIC_PROMPT_FILE

    corpus = Corpus.from_beir(XQUAD / "beir")
    judged = JudgedQueries.from_beir(XQUAD / "beir")
    held_q = dict(list(judged.queries.items())[:200]) if args.quick else judged.queries
    sparse = sparse_search(corpus)
    base_dense, _ = dense_search(base_dir, corpus)
    base = Searches(base_dense, sparse)
    ask, writer = generator_ask(args)
    started = time.perf_counter()
    pairs, stats = synthetic_pairs(
        corpus.texts,
        ask,
        base.hybrid_ids(FusionConfig()),
        load_file(SYNTHETIC_PROMPT_FILE),
        k=10,
        max_passages=args.xquad_passages,
        seed=args.seed,
        progress=False,
    )
    gen_s = time.perf_counter() - started
    print(
        f"xquad_en: {len(corpus.texts)} passages; {writer} wrote {stats.generated} questions "
        f"in {gen_s:.0f}s ({stats.generated / max(gen_s, 1e-9):.2f}/s): kept {stats.kept}, "
        f"empty {stats.empty}, not round-trip {stats.not_round_trip}, "
        f"near-duplicate {stats.near_duplicate}"
    )
    for pair in pairs[:3]:
        print(f"    e.g. {pair.query!r} -> {pair.positives[0]}")
    if not pairs:
        raise SystemExit("No synthetic question survived the filters; nothing to train on.")
    examples = mined_examples(pairs, base, corpus, args.negatives_per_query)
    tuned_dir = work / "xquad-embedder"
    run = finetune_embedder(base_dir, examples, tuned_dir, train_config(args, work, "xquad"))
    print_training("embedder", run)
    tuned_dense, _ = dense_search(tuned_dir, corpus)
    tuned = Searches(tuned_dense, sparse)
    synthetic_q = {p.query_id: p.query for p in pairs}
    synthetic_qrels: Qrels = {p.query_id: dict.fromkeys(p.positives, 1) for p in pairs}
    choice = tune_fusion(*tuned.rankings(synthetic_q), synthetic_qrels)
    print(f"  fusion tuned on the synthetic questions: {choice.best.name}")
    table = {
        "base": evaluate_variants(held_q, judged.qrels, base.dense, base.sparse),
        "synthetic": evaluate_variants(held_q, judged.qrels, tuned.dense, tuned.sparse),
        "synthetic+tuned fusion": evaluate_variants(
            held_q, judged.qrels, tuned.dense, tuned.sparse, choice.config()
        ),
    }
    print(f"  real questions ({len(held_q)}):")
    for model, variants in table.items():
        for variant, metrics in variants.items():
            print(rows_line(f"{model} {variant}", metrics))
    base_ndcg = table["base"]["hybrid"]["ndcg@10"]
    tuned_ndcg = table["synthetic+tuned fusion"]["hybrid"]["ndcg@10"]
    print(f"  ratio (hybrid nDCG@10, synthetic / base): {tuned_ndcg / base_ndcg:.3f}")
    return {"xquad_base": base_ndcg, "xquad_synthetic": tuned_ndcg, "train_s": run.seconds}


def arguments() -> argparse.Namespace:
    """The benchmark's options."""
    p = parser(__doc__ or "")
    p.add_argument("--quick", action="store_true", help="Fewer queries and steps (a smoke run).")
    p.add_argument("--sets", default="cranfield,xquad_en")
    p.add_argument("--work", type=Path, help="Keep models and checkpoints here (resumable).")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--reranker-batch-size", type=int, default=16)
    p.add_argument(
        "--reranker-lr",
        type=float,
        default=1e-4,
        help="The re-ranker's learning rate (its head starts untrained: it needs more than the "
        "embedder's).",
    )
    p.add_argument("--reranker-epochs", type=float, help="Default: --epochs.")
    p.add_argument(
        "--random-negatives",
        type=int,
        default=4,
        help="Easy negatives per query for the re-ranker, besides the hard ones.",
    )
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument(
        "--max-seq-length",
        type=int,
        default=128,
        help="Tokens a training text (a re-ranker pair) is cut to; the corpus is embedded at "
        "the model's own length.",
    )
    p.add_argument("--negatives", type=int, default=1, help="Hard negatives per training row.")
    p.add_argument("--negatives-per-query", type=int, default=4)
    p.add_argument("--checkpoint-steps", type=int, default=20)
    p.add_argument("--max-steps", type=int, help="Stop each training at this step.")
    p.add_argument("--rerank-top", type=int, default=50)
    p.add_argument("--xquad-passages", type=int, help="Generate from this many passages.")
    p.add_argument("--generator-url", help="An OpenAI-compatible endpoint (.../v1).")
    p.add_argument("--generator-model", default="default")
    args = p.parse_args()
    if args.quick:
        args.max_steps = args.max_steps or 6
        args.xquad_passages = args.xquad_passages or 40
    return args


def main() -> None:
    args = arguments()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("bm25s").setLevel(logging.WARNING)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    torch.set_num_threads(args.threads)
    print_machine(args.threads)
    print(f"load average at start: {os.getloadavg()[0]:.1f} (other workers share these CPUs)")
    base_dir = embedder_source().path
    print(
        f"base embedder: {base_dir}; training on {'cuda' if torch.cuda.is_available() else 'cpu'}"
    )
    result: dict[str, float] = {}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        for name in args.sets.split(","):
            part = (
                cranfield(args, base_dir, work)
                if name == "cranfield"
                else xquad(args, base_dir, work)
            )
            result["train_s"] = result.get("train_s", 0.0) + part.pop("train_s")
            result.update(part)
    print(
        f"total {time.perf_counter() - started:.0f}s; load average at end: {os.getloadavg()[0]:.1f}"
    )
    order = ["cranfield_base", "cranfield_tuned", "cranfield_rerank", "xquad_base"]
    order += ["xquad_synthetic", "train_s"]
    print(
        "RESULT "
        + " ".join(
            f"{k}={result[k]:.0f}" if k == "train_s" else f"{k}={result[k]:.4f}"
            for k in order
            if k in result
        )
    )


if __name__ == "__main__":
    main()
