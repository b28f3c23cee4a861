"""Deterministic answer metrics, SQuAD-style: containment, exact match and token F1 against
gold answers; citation precision and recall against gold documents; the share of answers that
carry ``[n]`` markers; abstention precision, recall and F1 against questions that have no
answer in the index. Pure functions: the evaluation pipeline, the benchmark and the tests
share them."""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)
_MARKER = re.compile(r"\[\d{1,3}\]")


def normalize(text: str) -> str:
    """Lower case, without punctuation, articles, ``[n]`` markers and extra whitespace (the
    SQuAD evaluation's normalisation, plus markers)."""
    text = _MARKER.sub(" ", text.lower()).translate(_PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def contains(answer: str, golds: Sequence[str]) -> bool:
    """Whether a gold answer occurs in the answer (both normalised)."""
    said = f" {normalize(answer)} "
    return any(f" {normalize(g)} " in said for g in golds if normalize(g))


def exact_match(answer: str, golds: Sequence[str]) -> bool:
    """Whether the normalised answer equals a normalised gold answer."""
    return any(normalize(answer) == normalize(g) for g in golds)


def token_f1(answer: str, golds: Sequence[str]) -> float:
    """The best token-overlap F1 of the answer against the gold answers."""
    said = normalize(answer).split()
    best = 0.0
    for gold in golds:
        want = normalize(gold).split()
        common = sum((Counter(said) & Counter(want)).values())
        if common:
            precision, recall = common / len(said), common / len(want)
            best = max(best, 2 * precision * recall / (precision + recall))
    return best


def citation_scores(cited: Iterable[str], gold: Iterable[str]) -> tuple[float, float]:
    """Precision and recall of the cited documents against the gold documents (precision is
    1.0 when nothing is cited, recall 1.0 when nothing is gold)."""
    cited_set, gold_set = set(cited), set(gold)
    hit = len(cited_set & gold_set)
    precision = hit / len(cited_set) if cited_set else 1.0
    recall = hit / len(gold_set) if gold_set else 1.0
    return precision, recall


def has_marker(answer: str) -> bool:
    """Whether the answer carries at least one ``[n]`` marker."""
    return bool(_MARKER.search(answer))


@dataclass(frozen=True)
class Abstention:
    """How well a system abstains: on questions without an answer in the index (positives)
    against questions with one."""

    precision: float
    recall: float
    f1: float

    @classmethod
    def of(cls, abstained: Sequence[bool], answerable: Sequence[bool]) -> Abstention:
        """Abstention precision, recall and F1 (abstaining is the positive class)."""
        if len(abstained) != len(answerable):
            raise ValueError("abstained and answerable must have the same length")
        tp = sum(a and not b for a, b in zip(abstained, answerable, strict=True))
        predicted, actual = sum(abstained), sum(not b for b in answerable)
        precision = tp / predicted if predicted else 0.0
        recall = tp / actual if actual else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        return cls(precision, recall, f1)
