"""The main job: documents and models in; a registered model, a bento, a published index, an
up-to-date knowledge graph and an evaluation of the answers out. The index refresh and the graph
update share the documents and chunks (so chunk ids join across the two); a sample of the
chunks calibrates the parity gate. Without ``corpus``, ``index.eval_dir`` and
``evaluation.qa_path`` it reads and evaluates the packaged demo set."""

from __future__ import annotations

from typing import Any

from zenml import pipeline

from pipelines.evaluate import evaluate_served
from pipelines.index_refresh import refresh_and_publish
from pipelines.kg_update import update_and_embed
from pipelines.model_build import model_build
from pipelines.retrain import retrain_flow
from slipway.registry import CHALLENGER
from steps.documents import (
    calibration_sample,
    chunk_corpus,
    corpus_fingerprint,
    evaluation_set,
    preprocess_documents,
)
from steps.registry import gate_bundle


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
    prompts: dict[str, Any] | None = None,
    evaluation: dict[str, Any] | None = None,
    gate: dict[str, Any] | None = None,
    retrain: dict[str, Any] | None = None,
) -> None:
    """Preprocess and chunk the corpus; build, check (on a sample of the chunks), register and
    package the models; then refresh and publish the index and update the knowledge graph with
    the newly registered champion embedder. ``index.eval_dir`` unset: the packaged judgements
    gate the packaged demo corpus, another corpus is published without a gate (logged).
    ``kg: {enabled: false}`` leaves the graph out. Once the index is published, a seeded
    ``evaluation.sample`` of the QA set (default: the packaged demo questions for the demo
    corpus; none for another corpus without ``evaluation.qa_path``) is answered by the
    champion over it and scored (``pipelines.evaluate``); ``evaluation: {enabled: false}``
    leaves that out. The whole-bundle gate (``gate``: retrieval_margin, answer_margin;
    ``enabled: false``, or no evaluation, leaves parity alone to promote) makes the new version
    champion only when parity, retrieval and answers all pass against the champion's figures;
    until then it is the ``challenger`` that the index, the graph and the evaluation use.
    ``retrain: {enabled: true, ...}`` (off by default) then runs the retraining loop
    (``pipelines.retrain``'s parameters) on the same documents."""
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
    evaluation = dict(evaluation or {})
    evaluated = evaluation.pop("enabled", True)
    gate = dict(gate or {})
    gated = bool(evaluated and gate.pop("enabled", True))
    # gated: the new version is the challenger until the whole-bundle gate settles it, and the
    # index, the graph and the evaluation use it; else parity alone makes it champion
    version = {"model_version": CHALLENGER} if gated else {}
    model_build(
        build=build,
        model_name=model_name,
        bento=bento,
        embedder_path=embedder_path,
        generator_path=generator_path,
        calibration=calibration,
        prompts=prompts,
        promote=not gated,
    )
    retrieval = refresh_and_publish(
        documents,
        chunks,
        {"model_name": model_name, **version, **index, "eval_dir": eval_dir},
        after="track_and_register",
    )
    kg = dict(kg or {})
    if kg.pop("enabled", True):
        update_and_embed(
            documents,
            chunks,
            {"model_name": model_name, **version, **kg},
            after="track_and_register",
        )
    if evaluated:
        report = evaluate_served(
            evaluation,
            corpus,
            after="publish_index_version",
            model_name=model_name,
            index_name=index.get("index_name", "default"),
            **version,
        )
        if gated:
            gate_bundle(retrieval, report, model_name=model_name, **gate)
    retraining = dict(retrain or {})
    if retraining.pop("enabled", False):
        retrain_flow(
            documents,
            chunks,
            eval_dir,
            corpus,
            model_name,
            {"index": index, "base_path": embedder_path, **retraining},
            after="gate_bundle" if evaluated and gated else "publish_index_version",
        )
