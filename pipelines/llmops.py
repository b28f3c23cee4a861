"""The main job: documents and models in, a registered model and a bento out.

Later flows (index refresh, knowledge-graph update) consume ``documents`` and the registered
model; they slot in here as further sub-pipelines.
"""

from __future__ import annotations

from typing import Any

from zenml import pipeline

from pipelines.model_build import model_build
from steps.documents import chunk_corpus, preprocess_documents


@pipeline(enable_cache=True)
def llmops_pipeline(
    build: dict[str, dict[str, Any]] | None = None,
    model_name: str = "slipway",
    corpus: str | None = None,
) -> None:
    """Preprocess and chunk the corpus, then build, check, register and package the models."""
    documents = preprocess_documents(corpus=corpus)
    chunk_corpus(documents)
    model_build(build=build, model_name=model_name)
