"""The main job: documents and models in; a registered model, a bento, a published index and
an up-to-date knowledge graph out. The index refresh and the graph update share the documents
and chunks (so chunk ids join across the two); a sample of the chunks calibrates the parity
gate. Without ``corpus`` and ``index.eval_dir`` it reads and evaluates the packaged demo set."""

from __future__ import annotations

from typing import Any

from zenml import pipeline

from pipelines.index_refresh import refresh_and_publish
from pipelines.kg_update import update_and_embed
from pipelines.model_build import model_build
from steps.documents import (
    calibration_sample,
    chunk_corpus,
    corpus_fingerprint,
    evaluation_set,
    preprocess_documents,
)


@pipeline(enable_cache=True)
def llmops_pipeline(
    build: dict[str, dict[str, Any]] | None = None,
    model_name: str = "slipway",
    corpus: str | None = None,
    index: dict[str, Any] | None = None,
    kg: dict[str, Any] | None = None,
    chunk_tokens: int = 200,
    overlap_tokens: int = 32,
    bento: bool = True,
    embedder_path: str | None = None,
    generator_path: str | None = None,
) -> None:
    """Preprocess and chunk the corpus; build, check (on a sample of the chunks), register and
    package the models; then refresh and publish the index and update the knowledge graph with
    the newly registered champion embedder. ``index.eval_dir`` unset: the packaged judgements
    gate the packaged demo corpus, another corpus is published without a gate (logged).
    ``kg: {enabled: false}`` leaves the graph out."""
    index = dict(index or {})
    eval_dir = evaluation_set(corpus=corpus, eval_dir=index.pop("eval_dir", None))
    documents = preprocess_documents(corpus=corpus, source_fingerprint=corpus_fingerprint(corpus))
    chunks = chunk_corpus(
        documents,
        chunk_tokens=chunk_tokens,
        overlap_tokens=overlap_tokens,
        embedder_path=embedder_path,
    )
    calibration = calibration_sample(chunks, corpus=corpus)
    model_build(
        build=build,
        model_name=model_name,
        bento=bento,
        embedder_path=embedder_path,
        generator_path=generator_path,
        calibration=calibration,
    )
    refresh_and_publish(
        documents,
        chunks,
        {"model_name": model_name, **index, "eval_dir": eval_dir},
        after="track_and_register",
    )
    kg = dict(kg or {})
    if kg.pop("enabled", True):
        update_and_embed(
            documents, chunks, {"model_name": model_name, **kg}, after="track_and_register"
        )
