"""Retraining: the embedder and re-ranker trainers (tiny models built here, nothing downloads),
fusion tuning and the validation of variants on hand-made rankings."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import pytest

from slipway.embedding import PoolingConfig
from slipway.retrieval.fusion import Hit
from slipway.retrieval.hybrid import FusionConfig
from slipway.training.fusion import fuse, tune_fusion
from slipway.training.train import (
    TrainConfig,
    embedder_rows,
    finetune_embedder,
    last_checkpoint,
    positive_weight,
    reranker_rows,
    train_reranker,
)
from slipway.training.validation import evaluate_variants, exact_search
from tests.tiny_models import make_tiny_embedder

DOCS = [
    "the quick brown fox jumps over the lazy dog",
    "onnx runtime runs transformer models fast on cpus",
    "paris is the capital of france and a large city",
    "write one sentence about the ocean",
    "slipway builds and serves language models",
    "hello world this is a small test corpus for tokenizers",
]
QUERIES = ["lazy fox", "fast onnx models", "capital of france", "ocean", "serving models", "hello"]


def examples() -> list[tuple[str, str, list[str]]]:
    """Each query with its document and the next two as hard negatives."""
    n = len(DOCS)
    return [(q, DOCS[i], [DOCS[(i + 1) % n], DOCS[(i + 2) % n]]) for i, q in enumerate(QUERIES)]


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_embedder(tmp_path_factory.mktemp("base"))


def config(tmp: Path, **kw: object) -> TrainConfig:
    settings: dict[str, object] = {
        "epochs": 2,
        "batch_size": 3,
        "max_seq_length": 32,
        "negatives": 2,
        "learning_rate": 1e-3,
        "checkpoint_dir": tmp / "checkpoints",
        "checkpoint_steps": 100,
    }
    return TrainConfig.model_validate(settings | kw)


def embeddings(model_dir: Path, texts: Sequence[str]) -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(model_dir), device="cpu", local_files_only=True)
    return np.asarray(model.encode(list(texts)))


def test_finetuned_embedder_differs_and_saves_the_base_layout(base: Path, tmp_path: Path) -> None:
    out = tmp_path / "tuned"
    result = finetune_embedder(base, examples(), out, config(tmp_path))
    assert result.completed and result.resumed_from is None
    assert result.steps == 4 and result.epochs == 2.0 and result.examples == 6
    assert result.loss is not None and math.isfinite(result.loss) and result.examples_per_s > 0
    for name in ("config.json", "tokenizer.json", "modules.json", "sentence_bert_config.json"):
        assert (out / name).is_file(), name
    assert (out / "1_Pooling" / "config.json").is_file()
    assert any("Normalize" in m["type"] for m in json.loads((out / "modules.json").read_text()))
    # the base's window and pooling, as Slipway's own ONNX embedder reads them
    assert PoolingConfig.from_model_dir(out) == PoolingConfig("mean", True, 64)
    before, after = embeddings(base, DOCS), embeddings(out, DOCS)
    assert after.shape == before.shape
    assert np.allclose(np.linalg.norm(after, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(before, after, atol=1e-4)


def test_a_stopped_run_resumes_from_its_checkpoint(base: Path, tmp_path: Path) -> None:
    settings = config(tmp_path, checkpoint_steps=1, keep_checkpoints=1, cached=True)
    stopped = finetune_embedder(
        base,
        examples(),
        tmp_path / "a",
        settings.model_copy(update={"max_steps": 1, "mini_batch_size": 2}),
    )
    assert not stopped.completed and stopped.steps == 1 and stopped.resumed_from is None
    run_dirs = list((tmp_path / "checkpoints").iterdir())
    assert len(run_dirs) == 1
    checkpoint = last_checkpoint(run_dirs[0])
    assert checkpoint is not None and checkpoint.name == "checkpoint-1"
    # a checkpoint half-written by a kill (no trainer state yet) is not resumed from
    (run_dirs[0] / "checkpoint-2").mkdir()
    resumed = finetune_embedder(
        base, examples(), tmp_path / "a", settings.model_copy(update={"mini_batch_size": 2})
    )
    assert resumed.resumed_from == checkpoint
    assert resumed.completed and resumed.steps == 4
    kept = sorted(
        p.name for p in run_dirs[0].glob("checkpoint-*") if (p / "trainer_state.json").is_file()
    )
    assert kept == ["checkpoint-4"]
    # other data never resumes from this run's checkpoints
    other = finetune_embedder(base, examples()[:3], tmp_path / "b", config(tmp_path, max_steps=1))
    assert other.resumed_from is None


def test_examples_without_negatives_train_in_their_own_set() -> None:
    rows = embedder_rows([("q", "p", ["n1"]), ("r", "s", [])], negatives=2)
    assert rows == {"hard": [["q", "p", "n1", "n1"]], "plain": [["r", "s"]]}
    assert embedder_rows([("q", "p", ["n1"])], negatives=0) == {"hard": [["q", "p"]]}
    # a query's rows (one per positive) spread over its negatives
    spread = embedder_rows([("q", f"p{i}", ["a", "b", "c"]) for i in range(9)], negatives=1)
    assert {row[2] for row in spread["hard"]} == {"a", "b", "c"}


def test_reranker_pairs_are_labelled_once() -> None:
    rows = reranker_rows([("q", "p1", ["n", "p2"]), ("q", "p2", ["n", "p1"])])
    assert sorted(rows) == [("q", "n", 0.0), ("q", "p1", 1.0), ("q", "p2", 1.0)]


def test_reranker_rows_add_seeded_easy_negatives_from_other_queries() -> None:
    hard_only = reranker_rows(examples())
    rows = reranker_rows(examples(), random_negatives=2, seed=3)
    assert set(hard_only) < set(rows)
    easy = [row for row in rows if row not in hard_only]
    assert len(easy) == 2 * len(QUERIES) and all(label == 0.0 for _, _, label in easy)
    labelled = {(q, t) for q, t, _ in hard_only}
    assert all((q, t) not in labelled and t in DOCS for q, t, _ in easy)  # never a known pair
    assert reranker_rows(examples(), random_negatives=2, seed=3) == rows  # reproducible
    assert reranker_rows(examples(), random_negatives=2, seed=4) != rows
    # a query whose texts cover the pool gets none; a positive is never an easy negative
    assert reranker_rows([("q", "p", ["n"])], random_negatives=5) == [
        ("q", "p", 1.0),
        ("q", "n", 0.0),
    ]


def test_positive_weight_balances_the_classes() -> None:
    assert positive_weight([("q", "a", 1.0), ("q", "b", 0.0), ("q", "c", 0.0)]) == 2.0
    assert positive_weight([("q", "a", 1.0)]) == 1.0


def test_train_config_keeps_old_keys_and_rejects_unknown_ones() -> None:
    config = TrainConfig.model_validate({"epochs": 1, "learning_rate": 1e-4})
    assert config.random_negatives == 4 and config.balance_labels
    with pytest.raises(ValueError, match="extra"):
        TrainConfig.model_validate({"reranker_negatives": 2})


def test_reranker_trains_and_scores_positives_above_negatives(base: Path, tmp_path: Path) -> None:
    from slipway.retrieval.rerank import CrossEncoderReranker

    out = tmp_path / "reranker"
    settings = config(tmp_path, epochs=8, batch_size=6, random_negatives=1)
    result = train_reranker(base, examples(), out, settings)
    assert result.completed and result.examples == 24 and result.steps == 32
    saved = json.loads((out / "config.json").read_text())
    assert saved["architectures"] == ["BertForSequenceClassification"]
    assert len(saved["id2label"]) == 1 and (out / "tokenizer.json").is_file()
    reranker = CrossEncoderReranker(out)
    scores = [reranker.score(q, DOCS) for q in QUERIES]
    assert all(len(s) == len(DOCS) for s in scores)
    positives = [s[i] for i, s in enumerate(scores)]
    negatives = [s[(i + 1) % len(DOCS)] for i, s in enumerate(scores)]
    assert np.mean(positives) > np.mean(negatives)


def test_reranker_needs_negatives(base: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="negative"):
        train_reranker(base, [("q", "p", [])], tmp_path / "r", config(tmp_path))


# --- fusion ---------------------------------------------------------------------------------


def ranking(ids: Sequence[str]) -> list[Hit]:
    return [(d, 1.0 / (r + 1)) for r, d in enumerate(ids)]


def test_fusion_with_sparse_weight_zero_keeps_the_dense_order() -> None:
    dense, sparse = ranking(["a", "b", "c"]), ranking(["z", "c", "y"])
    methods: tuple[Literal["rrf", "weighted"], ...] = ("rrf", "weighted")
    for method in methods:
        fused = fuse(dense, sparse, FusionConfig(method=method, sparse_weight=0.0))
        assert [d for d, _ in fused][:3] == ["a", "b", "c"]


def test_tune_fusion_picks_dense_only_when_sparse_is_noise() -> None:
    docs = [f"d{i}" for i in range(30)]
    dense, sparse, qrels = {}, {}, {}
    for q in range(12):
        relevant = docs[q]
        others = [d for d in docs if d != relevant]
        dense[f"q{q}"] = ranking([relevant, *others])
        sparse[f"q{q}"] = ranking(list(reversed(others))[:20])  # noise, without the relevant
        qrels[f"q{q}"] = {relevant: 1}
    choice = tune_fusion(dense, sparse, qrels)
    assert choice.best.name == "dense only" and choice.best.metrics["ndcg@10"] == 1.0
    assert choice.config().sparse_weight == 0.0
    assert len(choice.trials) == 1 + 5 * 4 + 5
    default = next(t for t in choice.trials if t.name == "rrf k=60 d=1 s=1")
    assert default.metrics["ndcg@10"] < 0.5
    assert choice.table().splitlines()[0].startswith("dense only")


def test_tune_fusion_picks_rrf_when_both_rankings_help() -> None:
    docs = [f"d{i}" for i in range(40)]
    dense, sparse, qrels = {}, {}, {}
    for q in range(10):
        a, b = docs[2 * q], docs[2 * q + 1]
        filler = [d for d in docs if d not in (a, b)]
        dense[f"q{q}"] = ranking([a, *filler[:18], b])  # b found only at rank 20
        sparse[f"q{q}"] = ranking([b, *filler[18:36], a])  # a found only at rank 20
        qrels[f"q{q}"] = {a: 1, b: 1}
    choice = tune_fusion(dense, sparse, qrels)
    assert choice.best.method == "rrf" and choice.best.sparse_weight > 0
    assert choice.best.metrics["ndcg@10"] == pytest.approx(1.0)
    dense_only = choice.trials[0]
    assert dense_only.name == "dense only" and dense_only.metrics["ndcg@10"] < 0.7
    tuned = choice.config(FusionConfig(candidates=50))
    assert tuned.candidates == 50 and tuned.method == "rrf" and tuned.rrf_k == choice.best.rrf_k


def test_tune_fusion_needs_judged_queries() -> None:
    with pytest.raises(ValueError, match="judgements"):
        tune_fusion({"q": ranking(["a"])}, {}, {"other": {"a": 1}})


# --- validation -----------------------------------------------------------------------------


class KeywordReranker:
    """1 for a text that contains the query, else 0."""

    def score(self, query: str, texts: Sequence[str]) -> list[float]:
        return [float(query in t) for t in texts]


TEXTS = {"d1": "alpha doc", "d2": "beta doc", "d3": "gamma doc"}
DENSE = {"alpha": ["d3", "d1", "d2"], "beta": ["d2", "d3", "d1"], "none": ["d1"]}
SPARSE = {"alpha": ["d1"], "beta": ["d2"], "none": []}


def fixed(rankings: dict[str, list[str]]) -> Callable[[Sequence[str]], list[list[Hit]]]:
    return lambda queries: [ranking(rankings[q]) for q in queries]


def test_evaluate_variants_on_a_hand_made_example() -> None:
    queries = {"q1": "alpha", "q2": "beta", "q3": "none"}  # q3 has no judgement: left out
    qrels = {"q1": {"d1": 1}, "q2": {"d2": 1}}
    out = evaluate_variants(
        queries,
        qrels,
        fixed(DENSE),
        fixed(SPARSE),
        reranker=KeywordReranker(),
        text_of=TEXTS.__getitem__,
    )
    first_at_2 = 1 / math.log2(3)  # nDCG@10 of the one relevant document at rank 2
    assert out["dense"]["ndcg@10"] == pytest.approx((first_at_2 + 1.0) / 2)
    assert out["hybrid"]["ndcg@10"] == pytest.approx(1.0)  # sparse puts d1 first for alpha
    assert out["dense_rerank"]["ndcg@10"] == pytest.approx(1.0)
    assert out["hybrid_rerank"]["ndcg@10"] == pytest.approx(1.0)
    assert all(m["recall@10"] == 1.0 and m["recall@100"] == 1.0 for m in out.values())
    # only the top ``rerank_top`` are re-ordered; dense only: the fused ranking is the dense one
    top1 = evaluate_variants(
        queries,
        qrels,
        fixed(DENSE),
        fixed(SPARSE),
        FusionConfig(sparse_weight=0.0),
        KeywordReranker(),
        TEXTS.__getitem__,
        rerank_top=1,
    )
    assert top1["dense_rerank"]["ndcg@10"] == pytest.approx((first_at_2 + 1.0) / 2)
    assert top1["hybrid"] == top1["dense"]
    assert set(evaluate_variants(queries, qrels, fixed(DENSE), fixed(SPARSE))) == {
        "dense",
        "hybrid",
    }
    only_hybrid = evaluate_variants(
        queries,
        qrels,
        fixed(DENSE),
        fixed(SPARSE),
        reranker=KeywordReranker(),
        text_of=TEXTS.__getitem__,
        reranked_variants=("hybrid",),
    )
    assert set(only_hybrid) == {"dense", "hybrid", "hybrid_rerank"}


def test_evaluate_variants_maps_chunks_to_documents() -> None:
    chunks = {"alpha": ["d2#0", "d1#1", "d1#0"]}
    out = evaluate_variants(
        {"q1": "alpha"},
        {"q1": {"d1": 1}},
        fixed(chunks),
        fixed({"alpha": []}),
        doc_of=lambda c: c.split("#")[0],
    )
    assert out["dense"]["ndcg@10"] == pytest.approx(1 / math.log2(3))


def test_exact_search_ranks_by_inner_product() -> None:
    vectors = np.eye(3, dtype=np.float32)
    search = exact_search(
        lambda texts: np.array([[0.1, 0.9, 0.5] for _ in texts]), ["a", "b", "c"], vectors, 2
    )
    hits = search(["x", "y"])
    assert [[d for d, _ in h] for h in hits] == [["b", "c"], ["b", "c"]]
    assert hits[0][0][1] == pytest.approx(0.9)
