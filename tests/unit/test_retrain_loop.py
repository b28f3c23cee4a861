"""The retraining loop's judgement of candidates: fusion tuned on training queries, base and
fine-tuned scored on validation queries, the re-ranker shipped only when it clears its bar."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from slipway.documents.chunking import Chunk
from slipway.retrieval.hybrid import FusionConfig, load_fusion, save_fusion
from slipway.training.data import Pair
from slipway.training.loop import ChunkSearch, TrainingSet, candidate_plot_png, judge_candidates

TOPICS = ["ocean", "desert", "forest", "glacier", "volcano", "river", "island", "canyon"]


def _chunks() -> list[Chunk]:
    out = []
    for i, topic in enumerate(TOPICS):
        for j in range(3):
            text = f"{topic} notes {j}: the {topic} has features number {i * 3 + j}"
            out.append(
                Chunk(
                    id=f"{topic}#{j}",
                    doc_id=topic,
                    position=j,
                    text=text,
                    n_tokens=len(text.split()),
                    content_hash=str(i * 3 + j),
                )
            )
    return out


def _bag(dim: int = 64, noise: float = 0.0, seed: int = 0):  # type: ignore[no-untyped-def]
    """A deterministic bag-of-words embedder (``noise`` blurs it: a worse 'base' model)."""
    rng = np.random.default_rng(seed)
    table: dict[str, np.ndarray] = {}

    def embed(texts: list[str]) -> np.ndarray:
        rows = []
        for text in texts:
            v = np.zeros(dim, np.float32)
            for word in text.lower().replace(":", " ").split():
                if word not in table:
                    table[word] = rng.normal(size=dim).astype(np.float32)
                v += table[word]
            v += noise * rng.normal(size=dim).astype(np.float32)
            rows.append(v / (np.linalg.norm(v) or 1.0))
        return np.stack(rows)

    return embed


class TopicReranker:
    """Scores a text by whether it names the query's topic (a perfect re-ranker here)."""

    def score(self, query: str, texts: Sequence[str]) -> list[float]:
        topic = next((t for t in TOPICS if t in query), "")
        return [1.0 if topic and topic in t else 0.0 for t in texts]


class NoisyReranker:
    def score(self, query: str, texts: Sequence[str]) -> list[float]:
        return [float(len(t) % 7) for t in texts]


def _training() -> TrainingSet:
    pairs = [
        Pair(query_id=f"q{i}", query=f"what about the {t}", positives=[t], source="labelled")
        for i, t in enumerate(TOPICS)
    ]
    return TrainingSet(train=pairs[:5], validation=pairs[5:])


def test_judge_candidates_scores_both_models_and_ships_a_reranker_that_helps(tmp_path) -> None:  # type: ignore[no-untyped-def]
    ground = ChunkSearch(_chunks(), depth=20)
    report = judge_candidates(
        _training(), ground, _bag(noise=3.0, seed=1), _bag(), TopicReranker(), rerank_margin=0.0
    )
    assert {"base.dense", "base.hybrid", "tuned.dense", "tuned.hybrid"} <= set(report.metrics)
    assert {"base.hybrid_rerank", "tuned.hybrid_rerank"} <= set(report.metrics)
    assert report.metrics["tuned.hybrid_rerank"]["ndcg@10"] == pytest.approx(1.0)
    assert report.ship_reranker and report.rerank_gain is not None and report.rerank_gain >= 0
    assert report.fusion["method"] in {"rrf", "weighted"} and report.fusion_table
    assert all(k.startswith("val.") and "@" not in k for k in report.flat())
    plot = tmp_path / "validation.png"
    candidate_plot_png(report, str(plot))
    assert plot.read_bytes().startswith(b"\x89PNG")


def test_a_reranker_below_the_bar_is_not_shipped_and_none_is_said() -> None:
    ground = ChunkSearch(_chunks(), depth=20)
    noisy = judge_candidates(_training(), ground, _bag(), _bag(), NoisyReranker(), 0.01)
    assert not noisy.ship_reranker and "not shipped" in noisy.reason
    none = judge_candidates(_training(), ground, _bag(), _bag(), None)
    assert not none.ship_reranker and none.rerank_gain is None
    assert "tuned.hybrid_rerank" not in none.metrics


def test_a_bundle_carries_its_fusion(tmp_path) -> None:  # type: ignore[no-untyped-def]
    assert load_fusion(tmp_path) == FusionConfig()
    tuned = FusionConfig(method="weighted", rrf_k=10, dense_weight=2.0, sparse_weight=0.5)
    save_fusion(tmp_path, tuned, reason="tuned")
    assert load_fusion(tmp_path) == tuned
    (tmp_path / "retrieval.json").write_text('{"fusion": {"rrf": 3}}')
    with pytest.raises(ValueError, match="unknown fusion settings"):
        load_fusion(tmp_path)
