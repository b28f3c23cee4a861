"""Retraining: learn the retriever and a re-ranker from the user's corpus and traffic, build
them into a challenger bundle, re-index with it (blue/green) and promote the pair only when the
whole-bundle gate says it is better."""

from __future__ import annotations

from typing import Any

from zenml import pipeline

from pipelines.evaluate import evaluate_served
from pipelines.model_build import model_build
from slipway.registry import CHALLENGER
from steps.documents import (
    calibration_sample,
    chunk_corpus,
    corpus_fingerprint,
    evaluation_set,
    preprocess_documents,
)
from steps.index import evaluate_index_version, refresh_index_version
from steps.registry import gate_bundle
from steps.training import (
    build_training_set,
    finetune_retriever,
    judge_retrievers,
    publish_if_champion,
    train_reranker_model,
)


def retrain_flow(
    documents: Any,
    chunks: Any,
    eval_dir: Any,
    corpus: str | None,
    model_name: str,
    params: dict[str, Any],
    after: str | None = None,
) -> None:
    """Wire the loop (shared by this pipeline and the main job's ``retrain`` flag): ``params``
    are the pipeline's parameters below, but for corpus, model_name and chunking."""
    params = dict(params)
    index = dict(params.pop("index", None) or {})
    index_name = index.get("index_name", "default")
    retain = index.pop("retain", None)
    index.pop("margin", None)  # the whole-bundle gate decides, not the index margin alone
    base_path = params.pop("base_path", None)
    reranker = dict(params.pop("reranker", None) or {})
    enabled = bool(reranker.pop("enabled", True))
    training = build_training_set(
        documents,
        model_name=model_name,
        index_name=index_name,
        after=after,
        **(params.pop("data", None) or {}),
    )
    tuned = finetune_retriever(
        training, documents, base_path=base_path, config=params.pop("embedder", None)
    )
    trained = train_reranker_model(
        training, documents, base_path=base_path, config=reranker, enabled=enabled
    )
    shipped, retrieval, _ = judge_retrievers(
        training,
        chunks,
        tuned,
        trained,
        base_path=base_path,
        rerank_margin=params.pop("rerank_margin", 0.01),
    )
    registered = model_build(
        build=params.pop("build", None),
        model_name=model_name,
        bento=False,
        embedder_path=tuned,
        reranker_path=shipped,
        retrieval=retrieval,
        calibration=calibration_sample(chunks, corpus=corpus),
        promote=False,
    )
    candidate = refresh_index_version(
        documents,
        chunks,
        after=registered,
        model_name=model_name,
        model_version=CHALLENGER,
        **index,
    )
    metrics = evaluate_index_version(candidate, eval_dir=eval_dir)
    report = evaluate_served(
        params.pop("evaluation", None),
        corpus,
        model_name=model_name,
        model_version=CHALLENGER,
        index_name=index_name,
        index_version=candidate,
    )
    decision = gate_bundle(
        metrics, report, model_name=model_name, **(params.pop("gate", None) or {})
    )
    publish_if_champion(candidate, decision, retain=retain)
    if params:
        raise ValueError(f"Unknown retraining parameters {sorted(params)}.")


@pipeline(enable_cache=False)
def retrain(
    corpus: str | None = None,
    model_name: str = "slipway",
    data: dict[str, Any] | None = None,
    embedder: dict[str, Any] | None = None,
    reranker: dict[str, Any] | None = None,
    rerank_margin: float = 0.01,
    build: dict[str, dict[str, Any]] | None = None,
    index: dict[str, Any] | None = None,
    evaluation: dict[str, Any] | None = None,
    gate: dict[str, Any] | None = None,
    chunk_tokens: int = 200,
    overlap_tokens: int = 32,
    base_path: str | None = None,
) -> None:
    """``data``: build_training_set's parameters (labelled, feedback, synthetic, split and
    mining); ``embedder`` / ``reranker``: TrainConfig (epochs, batch_size, ..., and
    ``enabled: false`` for the re-ranker); the re-ranker ships only with ``rerank_margin``
    more validation nDCG@10. The fine-tuned embedder (and re-ranker) go through model_build's
    stages as a ``challenger`` with the tuned fusion; a new index version is built with it
    while the published one serves; retrieval (``index.eval_dir``) and answers
    (``evaluation``) feed the whole-bundle gate, and the index version is published with the
    model only when it becomes champion."""
    index = dict(index or {})
    eval_dir = evaluation_set(corpus=corpus, eval_dir=index.pop("eval_dir", None))
    documents = preprocess_documents(corpus=corpus, source_fingerprint=corpus_fingerprint(corpus))
    chunks = chunk_corpus(  # cut by the base's tokenizer, which the fine-tuned model keeps
        documents,
        chunk_tokens=chunk_tokens,
        overlap_tokens=overlap_tokens,
        embedder_path=base_path,
    )
    retrain_flow(
        documents,
        chunks,
        eval_dir,
        corpus,
        model_name,
        {
            "data": data,
            "embedder": embedder,
            "reranker": reranker,
            "rerank_margin": rerank_margin,
            "build": build,
            "index": index,
            "evaluation": evaluation,
            "gate": gate,
            "base_path": base_path,
        },
    )
