"""Step: read and clean the document corpus."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from zenml import step

from slipway.config import get_settings
from slipway.documents import DocumentSet, default_corpus, read_jsonl_corpus
from steps.common import SLIPWAY_CACHE


@step(cache_policy=SLIPWAY_CACHE)
def preprocess_documents(
    corpus: str | None = None, min_chars: int = 20
) -> Annotated[DocumentSet, "documents"]:
    """Cleaned, de-duplicated documents from ``corpus`` (default: shared XQuAD passages)."""
    path = Path(corpus) if corpus else default_corpus(get_settings().data_dir)
    return read_jsonl_corpus(path, min_chars)
