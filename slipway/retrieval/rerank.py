"""Re-ranking: a cross-encoder scores (query, chunk) pairs for the top fused candidates.

No cross-encoder ships offline, so the default is off; a user passes a local model path
(``SLIPWAY_RERANKER_PATH``) and ``bench/retrieval_quality.py --reranker PATH`` measures
whether it helps on the shared sets before it is switched on.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol


class Reranker(Protocol):
    """Scores of ``texts`` for ``query``; higher is more relevant."""

    def score(self, query: str, texts: Sequence[str]) -> list[float]: ...


class CrossEncoderReranker:
    """A sentence-transformers ``CrossEncoder`` loaded from a local directory, on CPU."""

    def __init__(self, model_path: Path, batch_size: int = 32, max_length: int = 512) -> None:
        from sentence_transformers import CrossEncoder

        if not (Path(model_path) / "config.json").is_file():
            raise FileNotFoundError(
                f"No cross-encoder at {model_path} (config.json missing); set "
                "SLIPWAY_RERANKER_PATH to a local Hugging Face cross-encoder directory."
            )
        self.model = CrossEncoder(
            str(model_path), device="cpu", max_length=max_length, local_files_only=True
        )
        self.batch_size = batch_size

    def score(self, query: str, texts: Sequence[str]) -> list[float]:
        """One relevance score per text."""
        if not texts:
            return []
        scores = self.model.predict(
            [(query, t) for t in texts], batch_size=self.batch_size, show_progress_bar=False
        )
        return [float(s) for s in scores]


def configured_reranker(path: Path | None) -> Reranker | None:
    """The cross-encoder at ``SLIPWAY_RERANKER_PATH`` (``IndexSettings.reranker_path``); None
    when none is set. The service, the CLI and the benchmarks all load it here."""
    return CrossEncoderReranker(path) if path is not None else None


def rerank(
    reranker: Reranker,
    query: str,
    hits: Sequence[tuple[str, float]],
    texts: Sequence[str],
    top_n: int,
) -> list[tuple[str, float]]:
    """The first ``top_n`` hits re-ordered by the re-ranker's score; the rest keep their order."""
    head, tail = list(hits[:top_n]), list(hits[top_n:])
    scores = reranker.score(query, texts[: len(head)])
    ordered = sorted(zip(head, scores, strict=True), key=lambda pair: -pair[1])
    return [(doc, score) for (doc, _), score in ordered] + tail
