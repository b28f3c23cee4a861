"""Experiments on prompts: A/B comparisons of prompt versions on labelled data, through any
OpenAI-compatible endpoint, tracked in MLflow (:mod:`slipway.experiments.classify`)."""

from __future__ import annotations

from slipway.experiments.classify import (
    Comparison,
    Endpoint,
    ExperimentError,
    LabelledSet,
    compare_prompts,
    load_labelled_csv,
    log_comparison,
)

__all__ = [
    "Comparison",
    "Endpoint",
    "ExperimentError",
    "LabelledSet",
    "compare_prompts",
    "load_labelled_csv",
    "log_comparison",
]
