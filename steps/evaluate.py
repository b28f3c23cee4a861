"""Step: evaluate the served bundle's answers on a QA set (in-process, ``/v1/answer``'s code
path), tracked with MLflow 3's GenAI evaluation."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any

import mlflow
from zenml import log_metadata, step

from slipway.config import ServeSettings
from slipway.evaluation.bundle import AnswerSettings, EvaluationReport, evaluate_bundle, make_judge
from slipway.evaluation.dataset import qa_set_path, read_qa_set, sample_examples
from slipway.evaluation.inprocess import in_process_service
from slipway.evaluation.judge import JudgeConfig
from slipway.retrieval.index import IndexVersion
from slipway.serving import resolve_bundle
from steps.common import in_pipeline, index_settings, zenml_secret

logger = logging.getLogger(__name__)


@step(enable_cache=False, experiment_tracker=True)
def evaluate_answers(
    corpus: str | None = None,
    qa_path: str | None = None,
    sample: int = 50,
    seed: int = 0,
    model_name: str = "slipway",
    model_version: str | None = None,
    bundle_dir: str | None = None,
    index_name: str = "default",
    top_k: int = 4,
    max_new_tokens: int = 128,
    min_relevance: float | None = None,
    judge: dict[str, Any] | None = None,
    retrieval: bool = True,
    index_version: IndexVersion | None = None,
) -> Annotated[EvaluationReport, "evaluation_report"]:
    """Answer a seeded ``sample`` of the QA set (``qa_path``; the packaged demo questions for
    the demo corpus) with the registry's champion (or ``model_version``, or a local
    ``bundle_dir``) over the published index ``index_name``; score answers, citations,
    abstentions and, with ``judge`` (default: the served generator, a weak judge), the LLM
    judge's verdicts; log everything to the step's MLflow run. ``index_version`` (a refresh's
    output): answer over that version, published or not (a candidate before its gate)."""
    path = qa_set_path(corpus, qa_path)
    if path is None:
        return EvaluationReport(skipped=f"no QA set for corpus {corpus} (evaluation.qa_path)")
    examples = sample_examples(read_qa_set(path), sample, seed)
    served = resolve_bundle(
        ServeSettings(
            model_version=model_version, bundle_dir=Path(bundle_dir) if bundle_dir else None
        ),
        uri=mlflow.get_tracking_uri(),
        name=model_name,
    )
    serve = ServeSettings(
        index_name=index_version.name if index_version else index_name,
        index_version=index_version.version if index_version else None,
    )
    service = in_process_service(served, serve, index_settings())
    report = evaluate_bundle(
        service,
        examples,
        make_judge(JudgeConfig.model_validate(judge or {}), service, zenml_secret),
        AnswerSettings(top_k=top_k, max_new_tokens=max_new_tokens, min_relevance=min_relevance),
        retrieval=retrieval,
        qa_set=str(path),
    )
    if in_pipeline():  # the run's dashboard shows the figures (not for .entrypoint() calls)
        log_metadata(
            metadata={
                "evaluation": {
                    **report.metrics,
                    **{f"n_{k}": v for k, v in report.counts.items()},
                    "judge": report.judge.name if report.judge else "none",
                    "weak_judge": bool(report.judge and report.judge.weak),
                }
            }
        )
    return report
