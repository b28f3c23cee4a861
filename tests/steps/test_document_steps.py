"""Tier 2: the steps that pick the index's evaluation set and the parity gate's calibration
texts, called through ``.entrypoint()``."""

from __future__ import annotations

from pathlib import Path

import pytest

from slipway.documents.demo import DEMO_CORPUS


def test_evaluation_set_step_demo_default_own_corpus_and_missing_dir(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from steps.documents import evaluation_set

    assert evaluation_set.entrypoint() == str(DEMO_CORPUS.resolve())
    with caplog.at_level("WARNING"):
        assert evaluation_set.entrypoint(corpus=str(tmp_path / "docs")) == ""
    assert "quality gate is SKIPPED" in caplog.text
    with pytest.raises(FileNotFoundError, match=r"index\.eval_dir"):
        evaluation_set.entrypoint(eval_dir=str(tmp_path / "missing"))


def test_calibration_sample_step_draws_from_the_chunks(tiny_embedder: Path) -> None:
    from steps.documents import calibration_sample, chunk_corpus, preprocess_documents

    docs = preprocess_documents.entrypoint()  # the packaged demo corpus
    assert Path(docs.source) == DEMO_CORPUS and len(docs.documents) == 240
    chunks = chunk_corpus.entrypoint(
        docs, chunk_tokens=48, overlap_tokens=8, embedder_path=str(tiny_embedder)
    )
    sample = calibration_sample.entrypoint(chunks, limit=20)
    assert sample.source == str(DEMO_CORPUS) and len(sample.texts) == 20
    assert set(sample.texts) <= {c.text for c in chunks.chunks}
    assert sample == calibration_sample.entrypoint(chunks, limit=20)  # seeded
