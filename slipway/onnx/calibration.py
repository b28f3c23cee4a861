"""Calibration texts and prompts for the parity gate: a seeded sample of the corpus being
processed (the built-in set only without one), questions of the packaged demo set, and
(question, passages) groups for the re-ranker."""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Sequence
from pathlib import Path

from pydantic import BaseModel

from slipway.documents.demo import DEMO_CORPUS, DEMO_QA

BUILTIN_TEXTS: tuple[str, ...] = (
    "The quick brown fox jumps over the lazy dog.",
    "ONNX Runtime executes machine learning models across hardware platforms.",
    "Paris is the capital and most populous city of France.",
    "Transformers use self-attention to relate every token to every other token.",
    "The boundary layer separates from the wing surface at high angles of attack.",
    "Quarterly revenue grew by twelve percent, driven by cloud subscriptions.",
    "Please reschedule tomorrow's meeting to Thursday afternoon.",
    "A knowledge graph stores entities and the relations between them.",
    "Heat transfer in supersonic flow depends strongly on the Mach number.",
    "The committee approved the budget after a lengthy debate.",
    "Vector search finds the nearest neighbours of an embedding.",
    "She studied the migration patterns of Arctic terns for a decade.",
    "Short.",
    "Émile Zola wrote about life in nineteenth-century France; naïve café owners appear too.",
    "def add(a, b):\n    return a + b",
)

BUILTIN_PROMPTS: tuple[str, ...] = (
    "What is the capital of France?",
    "Write one sentence about the ocean.",
    "List three primary colors.",
    "Explain what a neural network is in one sentence.",
    "What is 2 + 2?",
    "Give a synonym for 'happy'.",
    "Name a planet in the solar system.",
    "Translate 'good morning' into French.",
    "What does a compiler do?",
    "Describe the color of the sky on a clear day.",
    "Who wrote Romeo and Juliet?",
    "Summarise in one sentence: the meeting was moved to Friday because the room was booked.",
    "What is the boiling point of water in Celsius?",
    "Suggest a name for a pet cat.",
    "Why do leaves change color in autumn?",
    "What is machine learning?",
    "How many days are in a week?",
    "Finish the sentence: The best way to learn is",
    "What is the opposite of 'cold'?",
    "Give one tip for writing clean code.",
)


class CalibrationSet(BaseModel):
    """Texts the parity gate embeds: a seeded sample of a corpus's chunks, and which corpus."""

    source: str
    seed: int
    texts: list[str]

    def summary(self) -> str:
        """One line: how many texts, from where."""
        return f"{len(self.texts)} calibration texts from {self.source} (seed {self.seed})"


def corpus_sample(texts: Iterable[str], limit: int = 256, seed: int = 0) -> list[str]:
    """Up to ``limit`` distinct non-blank texts, a seeded uniform sample (in shuffled order,
    so any prefix of it is a sample too)."""
    pool = list(dict.fromkeys(t for t in texts if t.strip()))
    random.Random(seed).shuffle(pool)
    return pool[:limit]


def calibration_set(
    texts: Iterable[str], source: str, limit: int = 256, seed: int = 0
) -> CalibrationSet:
    """A :class:`CalibrationSet` of a corpus's texts (its chunks: what the embedder sees)."""
    return CalibrationSet(source=source, seed=seed, texts=corpus_sample(texts, limit, seed))


def _jsonl_field(path: Path, field: str, limit: int) -> list[str]:
    out: list[str] = []
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            if len(out) >= limit:
                break
            value = json.loads(line).get(field)
            if isinstance(value, str) and value.strip():
                out.append(value)
    return out


def calibration_texts(corpus: Sequence[str] | None = None, limit: int = 256) -> list[str]:
    """Texts for embedder parity: the corpus's sample (its first ``limit``), topped up with
    the built-in edge cases when it has fewer; the built-in set alone without a corpus."""
    texts = list(corpus or ())[:limit]
    texts += [t for t in BUILTIN_TEXTS if t not in texts][: max(0, limit - len(texts))]
    return texts


def calibration_prompts(
    limit: int = 20, seed: int = 0, questions: Path | None = DEMO_QA
) -> list[str]:
    """Prompts for greedy agreement: half of them questions of the packaged demo set (a
    seeded sample), the rest built in."""
    prompts: list[str] = []
    if questions is not None and questions.is_file():
        pool = _jsonl_field(questions, "question", 400)
        random.Random(seed).shuffle(pool)
        prompts = pool[: limit // 2]
    prompts += list(BUILTIN_PROMPTS)
    return prompts[:limit]


def _demo_passages(path: Path) -> dict[str, str]:
    """Passage text by id from a BEIR ``corpus.jsonl``."""
    out: dict[str, str] = {}
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            row = json.loads(line)
            out[str(row["_id"])] = str(row.get("text", ""))
    return out


def _demo_questions(
    questions: Path, passages: Path, limit: int, seed: int
) -> list[tuple[str, str]]:
    """A seeded sample of (question, its passage) from the packaged demo set."""
    if not (questions.is_file() and passages.is_file()):
        return []
    texts = _demo_passages(passages)
    pool: list[tuple[str, str]] = []
    with questions.open(encoding="utf-8") as handle:
        for line in handle:
            row = json.loads(line)
            passage = texts.get(str(row.get("passage_id")), "")
            if passage.strip() and str(row.get("question", "")).strip():
                pool.append((str(row["question"]), passage))
    random.Random(seed).shuffle(pool)
    return pool[:limit]


def calibration_pairs(
    corpus: Sequence[str] | None = None,
    n_queries: int = 16,
    per_query: int = 8,
    seed: int = 0,
    questions: Path | None = DEMO_QA,
    passages: Path | None = DEMO_CORPUS / "corpus.jsonl",
) -> list[tuple[str, list[str]]]:
    """(query, candidates) groups for re-ranker parity: questions of the packaged demo set,
    each with its own passage and ``per_query - 1`` others drawn (seeded) from the corpus
    sample (the built-in texts without one); built-in prompts when the demo set is absent."""
    rng = random.Random(seed)
    pool = calibration_texts(corpus)
    demo = _demo_questions(questions, passages, n_queries, seed) if questions and passages else []
    groups: list[tuple[str, list[str]]] = [(q, [p]) for q, p in demo]
    groups = groups or [(q, []) for q in BUILTIN_PROMPTS[:n_queries]]
    for _, candidates in groups:
        others = [t for t in pool if t not in candidates]
        candidates += rng.sample(others, min(len(others), per_query - len(candidates)))
    return groups
