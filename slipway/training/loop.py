"""The retraining loop's glue: training sets from a corpus and its published index, searches
over chunks for validation, and the decision of what a challenger bundle carries."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, Field
from tqdm.auto import tqdm

from slipway.documents import Document
from slipway.documents.chunking import Chunk
from slipway.retrieval.evaluation import doc_ranking
from slipway.retrieval.fusion import Hit
from slipway.retrieval.hybrid import FusionConfig
from slipway.retrieval.index import chunk_text
from slipway.retrieval.metrics import Qrels
from slipway.retrieval.rerank import Reranker
from slipway.retrieval.sparse import SparseIndex
from slipway.training.data import Pair, Retrieve, TrainingExample, training_examples
from slipway.training.fusion import tune_fusion
from slipway.training.validation import DEPTH, RERANK_TOP, evaluate_variants, exact_search

logger = logging.getLogger(__name__)

Embed = Callable[[list[str]], np.ndarray]
DOC_CHARS = 2000  # a positive or negative document's text, as the trainers read it


class TrainingSet(BaseModel):
    """Training and (frozen) validation queries, mined hard negatives, and the counts."""

    train: list[Pair]
    validation: list[Pair]
    negatives: dict[str, list[str]] = Field(default_factory=dict)  # query id -> document ids
    stats: dict[str, int] = Field(default_factory=dict)

    def examples(self, texts: Mapping[str, str]) -> list[TrainingExample]:
        """(query, positive text, negative texts) rows of the training queries."""
        return training_examples(self.train, self.negatives, texts)

    def validation_judgements(self) -> tuple[dict[str, str], Qrels]:
        """The validation queries and their judgements (every positive relevance 1)."""
        queries = {p.query_id: p.query for p in self.validation}
        return queries, {p.query_id: dict.fromkeys(p.positives, 1) for p in self.validation}

    def train_judgements(self) -> tuple[dict[str, str], Qrels]:
        """The training queries and their judgements (for tuning the fusion)."""
        queries = {p.query_id: p.query for p in self.train}
        return queries, {p.query_id: dict.fromkeys(p.positives, 1) for p in self.train}


def document_texts(documents: Sequence[Document], chars: int = DOC_CHARS) -> dict[str, str]:
    """``{document id: title and text}``, cut to ``chars``: what a positive or negative is."""
    return {d.id: (f"{d.title}\n{d.text}" if d.title else d.text)[:chars] for d in documents}


def doc_retrieve(
    search: Callable[[Sequence[str]], list[list[Hit]]], doc_of: Callable[[str], str]
) -> Retrieve:
    """A chunk search as a :data:`Retrieve` of document ids (a document where its best chunk
    ranks)."""

    def retrieve(queries: list[str]) -> list[list[str]]:
        return [doc_ranking(hits, doc_of) for hits in search(queries)]

    return retrieve


class ChunkSearch:
    """Dense (exact, over chunk vectors of one embedder) and BM25 searches over a corpus'
    chunks: the validation and fusion-tuning ground, the same for every candidate model."""

    def __init__(self, chunks: Sequence[Chunk], depth: int = DEPTH) -> None:
        self.ids = [c.id for c in chunks]
        self.texts = [chunk_text(c) for c in chunks]
        self._doc = {c.id: c.doc_id for c in chunks}
        self._text = dict(zip(self.ids, self.texts, strict=True))
        self.depth = depth
        self.sparse_index = SparseIndex.build(self.ids, self.texts)

    def doc_of(self, chunk_id: str) -> str:
        """The document of a chunk."""
        return self._doc[chunk_id]

    def text_of(self, chunk_id: str) -> str:
        """A chunk's indexed text."""
        return self._text[chunk_id]

    def sparse(self, queries: Sequence[str]) -> list[list[Hit]]:
        """BM25 rankings."""
        return self.sparse_index.search(list(queries), self.depth)

    def dense(
        self, embed: Embed, batch: int = 64, label: str = ""
    ) -> Callable[[Sequence[str]], list[list[Hit]]]:
        """Exact dense search with ``embed`` (the corpus embedded once, with progress)."""
        parts = []
        for start in tqdm(
            range(0, len(self.texts), batch),
            desc=f"embedding the corpus {label}".strip(),
            unit="batch",
            mininterval=2.0,
        ):
            parts.append(np.asarray(embed(self.texts[start : start + batch]), dtype=np.float32))
        vectors = np.concatenate(parts) if parts else np.zeros((0, 1), np.float32)
        return exact_search(embed, self.ids, vectors, self.depth)


class CandidateReport(BaseModel):
    """Validation figures of the base and fine-tuned retrievers, the tuned fusion, and whether
    the re-ranker ships."""

    metrics: dict[str, dict[str, float]]  # "base.hybrid", "tuned.hybrid_rerank", ...
    fusion: dict[str, Any]
    fusion_table: str
    rerank_gain: float | None
    ship_reranker: bool
    reason: str

    def flat(self) -> dict[str, float]:
        """``{"val.tuned.hybrid.ndcg@10": ...}`` for MLflow."""
        return {
            f"val.{name}.{metric}".replace("@", "_at_"): value
            for name, figures in self.metrics.items()
            for metric, value in figures.items()
        }


def fusion_fields(config: FusionConfig) -> dict[str, Any]:
    """The tuned fields of a fusion config."""
    return {
        "method": config.method,
        "rrf_k": config.rrf_k,
        "dense_weight": config.dense_weight,
        "sparse_weight": config.sparse_weight,
        "rerank_top": config.rerank_top,
    }


def judge_candidates(
    training: TrainingSet,
    ground: ChunkSearch,
    base_embed: Embed,
    tuned_embed: Embed,
    reranker: Reranker | None,
    rerank_margin: float = 0.01,
    rerank_top: int = RERANK_TOP,
) -> CandidateReport:
    """Tune the fusion on the training queries with the fine-tuned embedder; score base and
    fine-tuned, dense and hybrid, with and without re-ranking the top ``rerank_top``, on the
    validation queries; the re-ranker ships when it adds at least ``rerank_margin`` nDCG@10 to
    the fine-tuned hybrid there."""
    base_dense = ground.dense(base_embed, label="(base)")
    tuned_dense = ground.dense(tuned_embed, label="(fine-tuned)")
    train_queries, train_qrels = training.train_judgements()
    ids = list(train_queries)
    texts = [train_queries[q] for q in ids]
    choice = tune_fusion(
        dict(zip(ids, tuned_dense(texts), strict=True)),
        dict(zip(ids, ground.sparse(texts), strict=True)),
        train_qrels,
        doc_of=ground.doc_of,
    )
    fusion = choice.config(FusionConfig(rerank_top=rerank_top))
    queries, qrels = training.validation_judgements()
    metrics: dict[str, dict[str, float]] = {}
    for label, dense in (("base", base_dense), ("tuned", tuned_dense)):
        for name, figures in evaluate_variants(
            queries,
            qrels,
            dense,
            ground.sparse,
            fusion=fusion if label == "tuned" else FusionConfig(),
            reranker=reranker,
            text_of=ground.text_of,
            rerank_top=rerank_top,
            doc_of=ground.doc_of,
            reranked_variants=("hybrid",),
        ).items():
            metrics[f"{label}.{name}"] = figures
    gain: float | None = None
    if reranker is None:
        ship, reason = False, "no re-ranker was trained"
    else:
        gain = metrics["tuned.hybrid_rerank"]["ndcg@10"] - metrics["tuned.hybrid"]["ndcg@10"]
        ship = gain >= rerank_margin
        reason = (
            f"the re-ranker {'adds' if gain >= 0 else 'loses'} {abs(gain):.4f} nDCG@10 on "
            f"validation ({'ships' if ship else 'not shipped'}: the bar is +{rerank_margin})"
        )
    logger.info("Candidates: %s; fusion %s", reason, fusion_fields(fusion))
    return CandidateReport(
        metrics=metrics,
        fusion=fusion_fields(fusion),
        fusion_table=choice.table(),
        rerank_gain=gain,
        ship_reranker=ship,
        reason=reason,
    )


def sentence_embed(model_dir: Path, batch_size: int = 64) -> Embed:
    """A sentence-transformers model's normalised embeddings (the torch reference)."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(model_dir), device=_device(), local_files_only=True)

    def embed(texts: list[str]) -> np.ndarray:
        return np.asarray(
            model.encode(
                texts,
                batch_size=batch_size,
                normalize_embeddings=True,
                show_progress_bar=False,
                convert_to_numpy=True,
            ),
            dtype=np.float32,
        )

    return embed


def _device() -> str:
    from slipway.training.train import training_device

    return training_device()


def candidate_plot_png(report: CandidateReport, path: str) -> None:
    """Grouped bars of nDCG@10, Recall@10 and Recall@100 per validated variant (base and
    fine-tuned; dense, hybrid, re-ranked), written to ``path``. A bare ``Figure``: no pyplot."""
    from matplotlib.figure import Figure

    names = sorted(report.metrics)
    measures = ["ndcg@10", "recall@10", "recall@100"]
    fig = Figure(figsize=(max(6.0, 1.1 * len(names)), 3.8))
    ax = fig.subplots()
    width = 0.8 / len(measures)
    for i, measure in enumerate(measures):
        values = [report.metrics[name].get(measure, 0.0) for name in names]
        ax.bar([x + i * width for x in range(len(names))], values, width, label=measure)
    ax.set_xticks([x + width for x in range(len(names))], names, rotation=30, ha="right")
    ax.set_ylim(0, 1)
    ax.set_title("Validation queries: base against fine-tuned retrieval")
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
