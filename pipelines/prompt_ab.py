"""Prompt A/B experiment: a labelled sample -> every prompt version through the endpoint ->
scores, McNemar's exact test, the decision, all in MLflow."""

from __future__ import annotations

from typing import Any

from zenml import pipeline

from steps.experiments import compare_prompt_versions, labelled_sample


@pipeline(enable_cache=False)
def prompt_ab(
    prompts: list[str],
    sample: dict[str, Any] | None = None,
    endpoint: dict[str, Any] | None = None,
    evaluation: dict[str, Any] | None = None,
) -> None:
    """Compare ``prompts`` (the first is the baseline). ``sample``: dataset, size, seed,
    max_chars, balanced, text_columns, label_column, id_column; ``endpoint``: base_url, model,
    api_key_env or api_key_secret, concurrency, rpm, max_tokens, timeout_s, attempts,
    json_label; ``evaluation``: variable, positive, alpha, resamples."""
    labelled = labelled_sample(**(sample or {}))
    compare_prompt_versions(labelled, prompts=prompts, **(endpoint or {}), **(evaluation or {}))
