"""IR metrics over graded relevance judgements (BEIR qrels)."""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

Qrels = dict[str, dict[str, int]]


def read_qrels(path: Path) -> Qrels:
    """``query-id corpus-id score`` TSV (with header) to ``{query: {doc: grade}}``."""
    qrels: Qrels = {}
    with path.open(encoding="utf-8") as handle:
        for row in csv.DictReader(handle, delimiter="\t"):
            grade = int(row["score"])
            if grade > 0:
                qrels.setdefault(row["query-id"], {})[row["corpus-id"]] = grade
    return qrels


def ndcg_at_k(ranked: Sequence[str], relevant: Mapping[str, int], k: int = 10) -> float:
    """nDCG@k with linear gains (the BEIR/pytrec_eval convention)."""
    dcg = sum(relevant.get(doc, 0) / math.log2(i + 2) for i, doc in enumerate(ranked[:k]))
    ideal = sorted(relevant.values(), reverse=True)[:k]
    idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal))
    return dcg / idcg if idcg > 0 else 0.0


def recall_at_k(ranked: Sequence[str], relevant: Mapping[str, int], k: int) -> float:
    """Share of the relevant documents found in the top ``k``."""
    if not relevant:
        return 0.0
    return len(set(ranked[:k]) & set(relevant)) / len(relevant)


def evaluate(run: Mapping[str, Sequence[str]], qrels: Qrels) -> dict[str, float]:
    """Mean nDCG@10, Recall@10 and Recall@100 over the judged queries of ``run``."""
    judged = [q for q in run if q in qrels]
    if not judged:
        raise ValueError("No query of the run has relevance judgements; check the query ids.")
    return {
        "ndcg@10": sum(ndcg_at_k(run[q], qrels[q], 10) for q in judged) / len(judged),
        "recall@10": sum(recall_at_k(run[q], qrels[q], 10) for q in judged) / len(judged),
        "recall@100": sum(recall_at_k(run[q], qrels[q], 100) for q in judged) / len(judged),
    }
