"""QA sets: JSON Lines of questions, their gold answers and (optionally) the documents that
hold them. A question with no gold answer is one the index cannot answer: the system should
abstain on it.

One object per line::

    {"id": "q1", "question": "...", "answers": ["..."], "doc_ids": ["doc-7"]}

``answers`` may be one string or a list (``[]``: unanswerable); the gold documents may be given
as ``doc_ids`` (a list) or ``passage_id`` (one id, XQuAD's ``qa.jsonl``); ``id`` defaults to the
line number. Document ids are the corpus's document ids (what ``citations[].doc_id`` carries).

A BEIR folder whose queries carry answers (``queries.jsonl`` rows ``{"_id", "text",
"answers"}``, gold documents in ``qrels/test.tsv``; 2WikiMultihopQA's layout) is read as a QA
set too: ``qa_path`` may name the folder.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from slipway.documents.demo import DEMO_QA, is_demo_corpus

logger = logging.getLogger(__name__)
QA_SETTING = "evaluation.qa_path"


class QAExample(BaseModel):
    """One question with its gold answers and gold documents (empty: not given)."""

    model_config = ConfigDict(frozen=True)

    id: str
    question: str
    answers: tuple[str, ...] = ()
    doc_ids: tuple[str, ...] = ()

    @property
    def answerable(self) -> bool:
        """Whether the index holds an answer (the set gives one)."""
        return bool(self.answers)


def _strings(value: Any, field: str, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,) if value.strip() else ()
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(v for v in value if v.strip())
    raise ValueError(f"{where}: {field!r} must be a string or a list of strings, got {value!r}.")


def parse_example(row: Any, where: str, default_id: str) -> QAExample:
    """One QA-set row (see the module's docstring); an error naming ``where`` and the field."""
    if not isinstance(row, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(row).__name__}.")
    question = row.get("question")
    if not isinstance(question, str) or not question.strip():
        raise ValueError(f"{where}: needs a non-empty 'question'.")
    doc_ids = _strings(row.get("doc_ids"), "doc_ids", where) or _strings(
        row.get("passage_id"), "passage_id", where
    )
    return QAExample(
        id=str(row.get("id", default_id)),
        question=question.strip(),
        answers=_strings(row.get("answers"), "answers", where),
        doc_ids=doc_ids,
    )


def read_beir_qa(root: Path, split: str = "test") -> list[QAExample]:
    """The questions of a BEIR folder whose ``queries.jsonl`` rows carry ``answers``, with
    their judged documents (relevance > 0 in ``qrels/<split>.tsv``) as gold documents."""
    queries, qrels = root / "queries.jsonl", root / "qrels" / f"{split}.tsv"
    for needed in (queries, qrels):
        if not needed.is_file():
            raise FileNotFoundError(
                f"{QA_SETTING}: {root} is a folder without {needed.relative_to(root)}; a QA set "
                "folder needs the BEIR layout (queries.jsonl with answers, qrels/test.tsv)."
            )
    gold: dict[str, list[str]] = {}
    with qrels.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle):
            parts = line.rstrip("\n").split("\t")
            if (number == 0 and parts[0] == "query-id") or len(parts) < 3:
                continue
            if float(parts[2]) > 0:
                gold.setdefault(parts[0], []).append(parts[1])
    examples = []
    with queries.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{queries}:{number}"
            row = json.loads(line)
            if "answers" not in row:
                raise ValueError(f"{where}: a QA set's queries need 'answers'.")
            qid = str(row.get("_id", number))
            examples.append(
                parse_example(
                    {
                        "question": row.get("text"),
                        "answers": row["answers"],
                        "doc_ids": gold.get(qid),
                    },
                    where,
                    qid,
                )
            )
    if not examples:
        raise ValueError(f"{QA_SETTING}: {queries} holds no question.")
    return examples


def read_qa_set(path: Path) -> list[QAExample]:
    """Every example of a JSON Lines QA set (blank lines skipped), or of a BEIR folder with
    answers (:func:`read_beir_qa`); ids must be unique."""
    if path.is_dir():
        return _unique(path, read_beir_qa(path))
    if not path.is_file():
        raise FileNotFoundError(
            f"{QA_SETTING}: {path} is not a file. Point it at a JSON Lines QA set "
            '({"question": ..., "answers": [...], "doc_ids": [...]} per line).'
        )
    examples: list[QAExample] = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{where}: not JSON ({exc.msg}).") from exc
            examples.append(parse_example(row, where, str(number)))
    if not examples:
        raise ValueError(f"{QA_SETTING}: {path} holds no question.")
    return _unique(path, examples)


def _unique(path: Path, examples: list[QAExample]) -> list[QAExample]:
    seen: set[str] = set()
    for example in examples:
        if example.id in seen:
            raise ValueError(f"{path}: the id {example.id!r} occurs more than once.")
        seen.add(example.id)
    return examples


def sample_examples(examples: Sequence[QAExample], size: int, seed: int) -> list[QAExample]:
    """A seeded random sample of ``size`` examples in the set's order (all for ``size`` <= 0
    or at least the set's size)."""
    if size <= 0 or size >= len(examples):
        return list(examples)
    chosen = sorted(random.Random(seed).sample(range(len(examples)), size))
    return [examples[i] for i in chosen]


def qa_set_path(corpus: str | Path | None, qa_path: str | Path | None) -> Path | None:
    """The QA set that evaluates answers over ``corpus``: ``qa_path`` when set, the packaged
    demo questions for the demo corpus (``corpus`` unset or the packaged one), else None (no
    answer evaluation, with a warning naming the setting)."""
    if qa_path:
        return Path(qa_path).expanduser().resolve()
    if corpus is None or is_demo_corpus(corpus):
        return DEMO_QA
    logger.warning(
        "%s is not set: answer evaluation is SKIPPED for corpus %s. Set %s to a JSON Lines "
        "QA set of this corpus (question, answers, optional doc_ids) to evaluate answers.",
        QA_SETTING,
        corpus,
        QA_SETTING,
    )
    return None
