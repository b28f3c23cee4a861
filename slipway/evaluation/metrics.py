"""Answer metrics: pure functions over strings, id sets and verdict lists.

Definitions (SQuAD v1.1 for the answer text; every metric is in [0, 1]):

- *normalized text*: lower-cased, punctuation and the articles a/an/the removed, whitespace
  collapsed; ``[n]`` citation markers are removed first (they are not part of an answer).
- *exact match*: the normalized answer equals one gold answer's.
- *token F1*: the best F1 over gold answers of the bag-of-tokens overlap.
- *containment*: one gold answer's normalized tokens occur, contiguously and as whole tokens,
  in the normalized answer (a long answer that states the gold span counts).
- *citation precision*: of the sources an answer cites (``[n]`` markers, ``citations[].cited``),
  the share whose document is a gold document.
- *citation recall*: of the gold documents, the share the answer cites.
- *source recall*: of the gold documents, the share among all sources the answer was given
  (cited or not): what retrieval and the prompt budget offered the generator.
- *abstention* precision, recall, F1: the positive class is "should abstain" (a question whose
  answer is not in the index); predicted positive is an abstention (``no_context``).
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

_MARKER = re.compile(r"\[\d{1,3}\]")
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = frozenset(string.punctuation)


def strip_markers(text: str) -> str:
    """``text`` without its ``[n]`` citation markers."""
    return _MARKER.sub(" ", text)


def normalize_answer(text: str) -> str:
    """SQuAD's normalization (lower case, no punctuation, no articles, single spaces), after
    the citation markers are removed."""
    text = strip_markers(text).lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def answer_tokens(text: str) -> list[str]:
    """The normalized tokens of ``text``."""
    return normalize_answer(text).split()


def exact_match(prediction: str, golds: Sequence[str]) -> float:
    """1.0 when the normalized prediction equals a normalized gold answer."""
    pred = normalize_answer(prediction)
    return float(any(pred == normalize_answer(g) for g in golds))


def _f1(pred: Sequence[str], gold: Sequence[str]) -> float:
    common = Counter(pred) & Counter(gold)
    same = sum(common.values())
    if not pred or not gold:
        return float(pred == gold)
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(gold)
    return 2 * precision * recall / (precision + recall)


def token_f1(prediction: str, golds: Sequence[str]) -> float:
    """The best SQuAD token F1 of the prediction against any gold answer (0 without golds)."""
    pred = answer_tokens(prediction)
    return max((_f1(pred, answer_tokens(g)) for g in golds), default=0.0)


def contains_answer(prediction: str, golds: Sequence[str]) -> float:
    """1.0 when the tokens of a gold answer occur contiguously in the prediction's tokens."""
    padded = f" {normalize_answer(prediction)} "
    return float(any((gold := normalize_answer(g)) and f" {gold} " in padded for g in golds))


def citation_precision(cited_docs: Sequence[str], gold_docs: Iterable[str]) -> float | None:
    """Share of the cited sources (one entry per cited source, so two cited chunks of one
    document count twice) whose document is gold; None when nothing is cited."""
    if not cited_docs:
        return None
    gold = set(gold_docs)
    return sum(doc in gold for doc in cited_docs) / len(cited_docs)


def doc_recall(docs: Iterable[str], gold_docs: Iterable[str]) -> float | None:
    """Share of the gold documents among ``docs``; None without gold documents."""
    gold = set(gold_docs)
    if not gold:
        return None
    return len(gold & set(docs)) / len(gold)


@dataclass(frozen=True)
class BinaryScores:
    """Precision, recall and F1 of one class; None where a denominator is zero."""

    precision: float | None
    recall: float | None
    f1: float | None
    support: int  # actual positives
    predicted: int  # predicted positives


def binary_scores(actual: Sequence[bool], predicted: Sequence[bool]) -> BinaryScores:
    """Precision, recall and F1 of the positive class."""
    if len(actual) != len(predicted):
        raise ValueError(f"{len(actual)} labels but {len(predicted)} predictions.")
    tp = sum(a and p for a, p in zip(actual, predicted, strict=True))
    support, flagged = sum(actual), sum(predicted)
    precision = tp / flagged if flagged else None
    recall = tp / support if support else None
    if precision is None or recall is None:
        f1 = None
    else:
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return BinaryScores(precision, recall, f1, support, flagged)


def agreement(first: Sequence[bool], second: Sequence[bool]) -> float | None:
    """Share of items on which two binary raters agree; None without items."""
    if len(first) != len(second):
        raise ValueError(f"{len(first)} verdicts against {len(second)}.")
    if not first:
        return None
    return sum(a == b for a, b in zip(first, second, strict=True)) / len(first)


def cohen_kappa(first: Sequence[bool], second: Sequence[bool]) -> float | None:
    """Cohen's kappa of two binary raters (scikit-learn's); None when it is undefined (no items,
    or both raters gave one same label throughout, so chance agreement is 1)."""
    if not first or len(set(first) | set(second)) < 2:
        return None
    from sklearn.metrics import cohen_kappa_score

    value = float(cohen_kappa_score(list(first), list(second)))
    return None if value != value else value  # NaN: undefined


def mean(values: Iterable[float | None]) -> float | None:
    """The mean of the values that are defined; None when none is."""
    defined = [v for v in values if v is not None]
    return sum(defined) / len(defined) if defined else None
