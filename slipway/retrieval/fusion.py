"""Rank fusion: reciprocal-rank (default) and weighted min-max score fusion."""

from __future__ import annotations

from collections.abc import Sequence

Hit = tuple[str, float]


def reciprocal_rank_fusion(
    rankings: Sequence[Sequence[Hit]], k: int = 60, weights: Sequence[float] | None = None
) -> list[Hit]:
    """RRF: ``sum_i w_i / (k + rank_i)``; ties broken by id for a stable order."""
    weights = weights or [1.0] * len(rankings)
    scores: dict[str, float] = {}
    for ranking, weight in zip(rankings, weights, strict=True):
        for rank, (doc, _) in enumerate(ranking, start=1):
            scores[doc] = scores.get(doc, 0.0) + weight / (k + rank)
    return sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))


def weighted_fusion(rankings: Sequence[Sequence[Hit]], weights: Sequence[float]) -> list[Hit]:
    """Min-max normalise each ranking's scores, then add them with ``weights``."""
    scores: dict[str, float] = {}
    for ranking, weight in zip(rankings, weights, strict=True):
        if not ranking:
            continue
        values = [s for _, s in ranking]
        low, high = min(values), max(values)
        span = high - low or 1.0
        for doc, score in ranking:
            scores[doc] = scores.get(doc, 0.0) + weight * (score - low) / span
    return sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))
