"""Evaluation: the served bundle's answers on a QA set, scored and tracked in MLflow."""

from __future__ import annotations

from typing import Any

from zenml import pipeline

from steps.evaluate import evaluate_answers


def evaluate_served(
    evaluation: dict[str, Any] | None,
    corpus: str | None = None,
    after: str | None = None,
    **defaults: Any,
) -> Any:
    """Wire the evaluation step (shared by this pipeline and the main job); ``defaults``
    (model_name, index_name) yield to the keys of ``evaluation``."""
    params = {**defaults, **(evaluation or {})}
    params.pop("enabled", None)
    return evaluate_answers(corpus=corpus, after=after, **params)


@pipeline(enable_cache=False)
def evaluate(corpus: str | None = None, evaluation: dict[str, Any] | None = None) -> None:
    """Evaluate what ``slipway serve`` serves (the registry's champion, or
    ``evaluation.model_version`` / ``bundle_dir``, over the published index
    ``evaluation.index_name``) on a seeded sample of a QA set: ``evaluation`` holds the step's
    parameters (qa_path, sample, seed, model_name, model_version, bundle_dir, index_name,
    top_k, max_new_tokens, min_relevance, judge, retrieval). Without ``evaluation.qa_path`` the
    packaged demo questions evaluate the demo corpus; another ``corpus`` needs its own."""
    evaluate_served(evaluation, corpus)
