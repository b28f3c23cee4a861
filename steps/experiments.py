"""Steps of the prompt A/B experiment: draw the labelled sample, compare the prompt versions
through the endpoint and track everything in the step's MLflow run."""

from __future__ import annotations

from typing import Annotated

import mlflow
from zenml import step

from slipway.experiments.classify import (
    Comparison,
    Endpoint,
    LabelledSet,
    api_key_from,
    compare_prompts,
    load_labelled_csv,
    log_comparison,
)
from slipway.prompts import resolve
from steps.common import zenml_secret


@step(enable_cache=False)
def labelled_sample(
    dataset: str | None = None,
    size: int = 60,
    seed: int = 0,
    max_chars: int = 1000,
    balanced: bool = True,
    text_columns: list[str] | None = None,
    label_column: str = "Spam/Ham",
    id_column: str | None = "Message ID",
) -> Annotated[LabelledSet, "labelled_set"]:
    """A seeded sample of a labelled CSV, stratified by label (default: the Enron spam set)."""
    return load_labelled_csv(
        dataset,
        size,
        seed,
        text_columns=tuple(text_columns or ("Subject", "Message")),
        label_column=label_column,
        id_column=id_column,
        balanced=balanced,
        max_chars=max_chars,
    )


@step(enable_cache=False, experiment_tracker=True)
def compare_prompt_versions(
    labelled_set: LabelledSet,
    prompts: list[str],
    base_url: str = "http://127.0.0.1:3000/v1",
    model: str = "slipway",
    api_key_env: str = "SLIPWAY_API_KEY",
    api_key_secret: str | None = None,
    concurrency: int = 4,
    rpm: float = 0.0,
    max_tokens: int = 8,
    timeout_s: float = 120.0,
    attempts: int = 6,
    json_label: bool = False,
    variable: str = "email",
    positive: str | None = "spam",
    alpha: float = 0.05,
    resamples: int = 2000,
) -> Annotated[Comparison, "prompt_comparison"]:
    """Every prompt version (registry references or YAML files; the first is the baseline) on
    the sample; scores, McNemar's exact tests, the decision, the per-example table and the plot
    go to the step's MLflow run."""
    resolved = [resolve(ref, tracking_uri=mlflow.get_tracking_uri()) for ref in prompts]
    endpoint = Endpoint(
        base_url=base_url,
        model=model,
        api_key=api_key_from(api_key_env, api_key_secret, zenml_secret),
        concurrency=concurrency,
        requests_per_minute=rpm,
        max_tokens=max_tokens,
        seed=labelled_set.seed,
        timeout_s=timeout_s,
        attempts=attempts,
        json_label=json_label,
    )
    comparison = compare_prompts(
        resolved,
        labelled_set,
        endpoint,
        positive=positive or None,
        alpha=alpha,
        variable=variable,
        resamples=resamples,
    )
    if mlflow.active_run() is None:
        with mlflow.start_run(run_name="prompt-ab"):
            log_comparison(comparison, resolved, labelled_set, endpoint, refs=prompts)
    else:
        log_comparison(comparison, resolved, labelled_set, endpoint, refs=prompts)
    print(f"Decision: {comparison.decision}")
    return comparison
