"""Tuning the hybrid fusion on training queries: RRF over a grid of ``k`` and dense/sparse
weights, min-max weighted fusion over the same weights, and dense only, by mean nDCG@10."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

from slipway.retrieval.evaluation import doc_ranking
from slipway.retrieval.fusion import Hit, reciprocal_rank_fusion, weighted_fusion
from slipway.retrieval.hybrid import FusionConfig
from slipway.retrieval.metrics import Qrels, evaluate

Rankings = Mapping[str, Sequence[Hit]]  # query id -> ranked (id, score)
Method = Literal["rrf", "weighted"]
TUNE_METRIC = "ndcg@10"
RRF_KS = (10, 30, 60, 100)
# (dense, sparse) weights; (1, 0) is dense only, tried first so that it wins ties.
WEIGHTS = ((1.0, 1.0), (1.0, 0.5), (1.0, 0.25), (0.5, 1.0), (0.25, 1.0))


@dataclass(frozen=True)
class FusionTrial:
    """One fusion setting and its mean metrics on the tuning queries."""

    method: Method
    rrf_k: int
    dense_weight: float
    sparse_weight: float
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """``dense only``, ``rrf k=60 d=1 s=0.5`` or ``weighted d=1 s=0.5``."""
        if self.sparse_weight == 0:
            return "dense only"
        k = f" k={self.rrf_k}" if self.method == "rrf" else ""
        return f"{self.method}{k} d={self.dense_weight:g} s={self.sparse_weight:g}"

    def config(self, base: FusionConfig | None = None) -> FusionConfig:
        """This setting on top of ``base`` (its candidates, re-rank and graph settings kept)."""
        return replace(
            base or FusionConfig(),
            method=self.method,
            rrf_k=self.rrf_k,
            dense_weight=self.dense_weight,
            sparse_weight=self.sparse_weight,
        )


@dataclass(frozen=True)
class FusionChoice:
    """The best trial by nDCG@10 (the first of equals) and the table of all tried."""

    best: FusionTrial
    trials: list[FusionTrial]

    def config(self, base: FusionConfig | None = None) -> FusionConfig:
        """The best setting as a :class:`FusionConfig`."""
        return self.best.config(base)

    def table(self) -> str:
        """The trials, best first, one per line."""
        ranked = sorted(self.trials, key=lambda t: -t.metrics[TUNE_METRIC])
        return "\n".join(
            f"{t.name:28s} " + "  ".join(f"{m}={v:.4f}" for m, v in t.metrics.items())
            for t in ranked
        )


def fuse(dense: Sequence[Hit], sparse: Sequence[Hit], config: FusionConfig) -> list[Hit]:
    """The two rankings as one, as :class:`HybridSearcher` fuses them under ``config`` (a
    weight of 0 leaves that ranking's order out: with sparse 0, the dense order)."""
    weights = [config.dense_weight, config.sparse_weight]
    if config.method == "weighted":
        return weighted_fusion([dense, sparse], weights)
    return reciprocal_rank_fusion([dense, sparse], k=config.rrf_k, weights=weights)


def fused_run(
    dense: Rankings,
    sparse: Rankings,
    config: FusionConfig,
    doc_of: Callable[[str], str] | None = None,
) -> dict[str, list[str]]:
    """Each query's fused ranking of ids (of documents, through ``doc_of`` when given)."""
    run = {}
    for query in dense.keys() | sparse.keys():
        hits = fuse(dense.get(query, []), sparse.get(query, []), config)
        run[query] = doc_ranking(hits, doc_of) if doc_of else [i for i, _ in hits]
    return run


def candidates(
    rrf_ks: Sequence[int], weights: Sequence[tuple[float, float]], methods: Sequence[Method]
) -> list[FusionTrial]:
    """Dense only first, then every method x weights (x k for RRF)."""
    trials = [FusionTrial("rrf", 60, 1.0, 0.0)]
    for method in methods:
        for dense_weight, sparse_weight in weights:
            if sparse_weight == 0:
                continue
            for k in rrf_ks if method == "rrf" else (60,):
                trials.append(FusionTrial(method, k, dense_weight, sparse_weight))
    return trials


def tune_fusion(
    dense: Rankings,
    sparse: Rankings,
    qrels: Qrels,
    rrf_ks: Sequence[int] = RRF_KS,
    weights: Sequence[tuple[float, float]] = WEIGHTS,
    methods: Sequence[Method] = ("rrf", "weighted"),
    doc_of: Callable[[str], str] | None = None,
) -> FusionChoice:
    """The fusion setting with the best mean nDCG@10 over the judged queries of ``dense`` and
    ``sparse`` (training queries, never the validation ones), among dense only and the grid."""
    judged = {q for q in dense.keys() | sparse.keys() if q in qrels}
    if not judged:
        raise ValueError("No query of the rankings has relevance judgements; check the ids.")
    dense = {q: dense.get(q, []) for q in judged}
    sparse = {q: sparse.get(q, []) for q in judged}
    tried = [
        replace(trial, metrics=evaluate(fused_run(dense, sparse, trial.config(), doc_of), qrels))
        for trial in candidates(rrf_ks, weights, methods)
    ]
    best = tried[0]
    for trial in tried[1:]:
        if trial.metrics[TUNE_METRIC] > best.metrics[TUNE_METRIC]:
            best = trial
    return FusionChoice(best=best, trials=tried)
