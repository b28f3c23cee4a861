"""Tier 1: rated answers exported as a QA set that the evaluation pipeline reads."""

from __future__ import annotations

import json
from pathlib import Path

from slipway.evaluation.dataset import read_qa_set
from slipway.rag.feedback import qa_rows
from tests.feedback_rows import exported_row as row


def test_positive_ratings_become_gold_answers_the_evaluation_reads(tmp_path: Path) -> None:
    rows = [
        row("positive"),
        row("negative", expected_chunk_ids=["krakow#2"]),  # no gold answer: left out
        row("positive", request_id="r-2", expected_chunk_ids=["poland#0"]),
        row("positive", request_id="r-3", answer=None),  # an abstention carries no answer
    ]
    out = list(qa_rows(rows))
    assert out == [
        {
            "id": "r-positive",
            "question": "Where is Warsaw?",
            "answers": ["In Poland [1]."],
            "doc_ids": ["vistula", "warsaw"],
        },
        {
            "id": "r-2",
            "question": "Where is Warsaw?",
            "answers": ["In Poland [1]."],
            "doc_ids": ["poland"],
        },
    ]
    path = tmp_path / "qa.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in out))
    examples = read_qa_set(path)
    assert [e.id for e in examples] == ["r-positive", "r-2"]
    assert examples[1].doc_ids == ("poland",) and examples[0].answerable
