"""Answers that show their sources: ``[n]`` markers attributed by overlap when the generator
omits them, markers that name no source removed, and the relevance test that turns a question
without relevant sources into an abstention instead of a free generation.

Pure functions over strings and unit vectors: the service, the evaluation pipeline and the
tests share them."""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
from bm25s.stopwords import STOPWORDS_EN

_MARK = re.compile(r"\s*\[(\d{1,3})\]")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_WORD = re.compile(r"\w+", re.UNICODE)
_TRAILING = re.compile(r"[\s.!?;:,]*$")
# Words that say nothing about where an answer came from: bm25s's English stopwords (the
# sparse index drops the same ones), and the words of the answer prompt itself.
STOPWORDS = frozenset(STOPWORDS_EN) | {"answer", "source", "sources", "question"}
ABSTENTION = "I don't know: none of the indexed sources is relevant enough to answer this question."


def content_words(text: str) -> list[str]:
    """The lower-cased words of ``text`` that carry meaning (stopwords left out)."""
    return [w for w in _WORD.findall(text.lower()) if w not in STOPWORDS]


def overlap(sentence: str, source: str) -> float:
    """Share of the sentence's content words that occur in the source (0 when it has none)."""
    words = content_words(sentence)
    if not words:
        return 0.0
    vocabulary = set(content_words(source))
    return sum(w in vocabulary for w in words) / len(words)


def valid_markers(answer: str, n_sources: int) -> set[int]:
    """The ``[n]`` markers of an answer that name one of its ``n_sources`` sources."""
    return {int(m) for m in _MARK.findall(answer) if 1 <= int(m) <= n_sources}


def drop_invalid_markers(answer: str, n_sources: int) -> str:
    """The answer without markers that name no source (``[7]`` of four sources)."""
    return _MARK.sub(
        lambda m: m.group(0) if 1 <= int(m.group(1)) <= n_sources else "", answer
    ).strip()


def _mark(sentence: str, n: int) -> str:
    """``sentence`` with `` [n]`` before its closing punctuation."""
    end = _TRAILING.search(sentence)
    cut = end.start() if end else len(sentence)
    return f"{sentence[:cut]} [{n}]{sentence[cut:]}"


def attribute(answer: str, sources: Sequence[str], min_overlap: float = 0.5) -> str:
    """``answer`` with every sentence that carries no marker given one: the source sharing
    the most of its content words, when that share is at least ``min_overlap``. Markers
    naming no source are removed first; sentences the generator cited keep their markers; a
    sentence no source supports stays unmarked (a marker is a claim, never a decoration)."""
    answer = drop_invalid_markers(answer, len(sources))
    if not answer or not sources:
        return answer
    sentences = _SENTENCE_END.split(answer)
    out = []
    for sentence in sentences:
        if valid_markers(sentence, len(sources)):
            out.append(sentence)
            continue
        scores = [overlap(sentence, source) for source in sources]
        best = int(np.argmax(scores))
        out.append(_mark(sentence, best + 1) if scores[best] >= min_overlap else sentence)
    return " ".join(out)


def relevance(query: np.ndarray, passages: np.ndarray) -> list[float]:
    """Cosine similarity of a unit query vector to each unit passage vector."""
    if len(passages) == 0:
        return []
    return [float(x) for x in np.asarray(passages, np.float32) @ np.asarray(query, np.float32)]


def should_abstain(scores: Sequence[float], threshold: float) -> bool:
    """True when no retrieved passage is relevant enough (or none was retrieved)."""
    return not scores or max(scores) < threshold
