"""The demo corpus that ships inside Slipway (XQuAD English, CC BY-SA 4.0) and its judgements:
what the main job reads and evaluates when no corpus and no evaluation set are given."""

from __future__ import annotations

import logging
from pathlib import Path

logger = logging.getLogger(__name__)

DEMO_DIR = Path(__file__).parent / "data" / "xquad_en"
DEMO_CORPUS = DEMO_DIR / "beir"  # a BEIR folder: corpus.jsonl, queries.jsonl, qrels/test.tsv
DEMO_EVAL_DIR = DEMO_CORPUS  # the demo corpus judges itself: its questions and their passages
DEMO_QA = DEMO_DIR / "qa.jsonl"  # the same questions with their answers
EVAL_SETTING = "index.eval_dir"


def is_demo_corpus(source: str | Path) -> bool:
    """Whether ``source`` is the packaged demo corpus (its BEIR folder or its corpus.jsonl)."""
    path = Path(source).expanduser().resolve()
    return path in (DEMO_CORPUS.resolve(), (DEMO_CORPUS / "corpus.jsonl").resolve())


def checked_eval_dir(
    eval_dir: str | Path, split: str = "test", setting: str = EVAL_SETTING
) -> Path:
    """``eval_dir`` as an absolute path, once it holds ``queries.jsonl`` and
    ``qrels/<split>.tsv``; a ``FileNotFoundError`` naming ``setting`` when it does not."""
    path = Path(eval_dir).expanduser().resolve()
    missing = [
        name for name in ("queries.jsonl", f"qrels/{split}.tsv") if not (path / name).is_file()
    ]
    if missing:
        where = "does not exist" if not path.exists() else f"has no {' and no '.join(missing)}"
        raise FileNotFoundError(
            f"{setting}: {eval_dir} ({path}) {where}. Set {setting} to a BEIR folder "
            f"(queries.jsonl, qrels/{split}.tsv) that judges your corpus, or leave it unset "
            "to run without the quality gate."
        )
    return path


def evaluation_dir(
    corpus: str | Path | None,
    eval_dir: str | Path | None,
    split: str = "test",
    setting: str = EVAL_SETTING,
) -> Path | None:
    """The BEIR folder whose judgements gate the index of ``corpus``: ``eval_dir`` when it is
    set (it must exist), the packaged demo judgements for the demo corpus (``corpus`` unset or
    the packaged one), else None: no quality gate, and a warning that says so."""
    if eval_dir:
        return checked_eval_dir(eval_dir, split, setting)
    if corpus is None or is_demo_corpus(corpus):
        logger.info(
            "%s not set: the demo corpus's own judgements gate the index (%s)",
            setting,
            DEMO_EVAL_DIR,
        )
        return DEMO_EVAL_DIR
    logger.warning(
        "%s is not set: the index quality gate is SKIPPED for corpus %s (no retrieval metrics; "
        "each complete version is published unchecked). Set %s to a BEIR folder "
        "(queries.jsonl, qrels/%s.tsv) that judges this corpus to measure and gate it.",
        setting,
        corpus,
        setting,
        split,
    )
    return None
