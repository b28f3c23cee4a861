"""Calibration texts and prompts for the parity gate: shared data when present, else built in."""

from __future__ import annotations

import json
import random
from pathlib import Path

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


def calibration_texts(data_dir: Path | None, limit: int = 256, seed: int = 0) -> list[str]:
    """Documents and queries from the shared data sets, plus built-in edge cases."""
    texts: list[str] = list(BUILTIN_TEXTS)
    if data_dir is not None and data_dir.is_dir():
        pool: list[str] = []
        for rel, field in (
            ("cranfield/corpus.jsonl", "text"),
            ("cranfield/queries.jsonl", "text"),
            ("xquad_en/passages.jsonl", "text"),
        ):
            if (data_dir / rel).is_file():
                pool += _jsonl_field(data_dir / rel, field, limit * 4)
        random.Random(seed).shuffle(pool)
        texts += pool[: max(0, limit - len(texts))]
    return texts[:limit] if len(texts) > limit else texts


def calibration_prompts(data_dir: Path | None, limit: int = 20, seed: int = 0) -> list[str]:
    """Prompts for greedy agreement: XQuAD questions when present, else built-in ones."""
    prompts: list[str] = []
    qa = data_dir / "xquad_en" / "qa.jsonl" if data_dir is not None else None
    if qa is not None and qa.is_file():
        questions = _jsonl_field(qa, "question", 400)
        random.Random(seed).shuffle(questions)
        prompts = questions[: limit // 2]
    prompts += list(BUILTIN_PROMPTS)
    return prompts[:limit]
