"""Step: track the build in MLflow, register the bundle, move the champion alias."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Annotated, Any

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from zenml import get_step_context, log_metadata, step
from zenml.exceptions import StepContextError

from slipway.evaluation.bundle import EvaluationReport
from slipway.onnx.bundle import OnnxBundle
from slipway.onnx.cpu import read_cpu_info
from slipway.onnx.evaluate import parity_metrics
from slipway.onnx.parity import parity_report_html
from slipway.onnx.session import default_providers
from slipway.onnx.stages import build_params, configs_from
from slipway.prompts import PROMPTS_FILE, Selection, serve_selection, sync_sources
from slipway.registry import (
    BUNDLE_ARTIFACT_PATH,
    CHALLENGER,
    prompt_version_tags,
    register_bundle,
    settle,
)
from slipway.retrieval.evaluation import flat_metrics
from slipway.retrieval.hybrid import RETRIEVAL_FILE, FusionConfig
from steps.common import in_pipeline
from steps.onnx import BuildOverrides


def _has_model() -> bool:
    try:
        return get_step_context().model is not None
    except (RuntimeError, StepContextError):
        return False


@step(experiment_tracker=True, enable_cache=False)
def track_and_register(
    bundle: OnnxBundle,
    build: BuildOverrides = None,
    model_name: str = "slipway",
    prompts: dict[str, Selection] | None = None,
    promote: bool = True,
    retrieval: dict[str, Any] | None = None,
) -> Annotated[dict[str, str], "registered_model"]:
    """Log parameters, metrics and artifacts to MLflow; register the prompt sources (new
    versions where they changed) and the bundle with the prompt versions it serves
    (``prompts``: per kind a version, alias or ``{ref: weight}``; default ``latest``);
    make it champion unless its parity is worse (``promote``), or else the ``challenger`` that
    :func:`gate_bundle` promotes or holds back. ``retrieval``: the tuned fusion (``fusion``
    and how it was chosen) the bundle carries as ``retrieval.json``."""
    run = mlflow.active_run() or mlflow.start_run()
    sync_sources(mlflow.get_tracking_uri())
    served = serve_selection(prompts, mlflow.get_tracking_uri())
    cpu = read_cpu_info()
    params = build_params(configs_from(build), cpu, bundle.roles)
    params.update({f"{r}_source": str(bundle.source_path(r)) for r in bundle.roles})
    params["provider"] = default_providers()[0]
    mlflow.log_params(params)
    metrics = parity_metrics(bundle.manifest.get("parity", {})) | bundle.manifest.get("latency", {})
    mlflow.log_metrics(metrics)
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "parity_report.html"
        report.write_text(parity_report_html(bundle.manifest.get("parity", {})))
        (Path(tmp) / "parity_report.json").write_text(json.dumps(bundle.manifest.get("parity", {})))
        mlflow.log_artifacts(tmp, "reports")
    if (bundle.root / "latency.png").is_file():
        mlflow.log_artifact(str(bundle.root / "latency.png"), "reports")
    mlflow.log_artifacts(str(bundle.root), BUNDLE_ARTIFACT_PATH)
    mlflow.log_dict(served.to_json(), f"{BUNDLE_ARTIFACT_PATH}/{PROMPTS_FILE}")
    if retrieval is not None:
        FusionConfig(**retrieval.get("fusion", {}))  # unknown settings fail before registering
        mlflow.log_dict(retrieval, f"{BUNDLE_ARTIFACT_PATH}/{RETRIEVAL_FILE}")
    prompt_tags = prompt_version_tags(served)
    mlflow.set_tags(prompt_tags)
    tags = {"roles": ",".join(bundle.roles), "cpu_isa": cpu.isa, **prompt_tags}
    if in_pipeline():
        tags["zenml_run"] = get_step_context().pipeline_run.name
    version = register_bundle(
        MlflowClient(),
        model_name,
        mlflow.get_artifact_uri(BUNDLE_ARTIFACT_PATH),
        run.info.run_id,
        metrics,
        tags,
        promote=promote,
    )
    result = {
        "name": version.name,
        "version": version.version,
        "source": version.source,
        "champion": str(version.champion).lower(),
        "tracking_uri": mlflow.get_tracking_uri(),
    }
    if _has_model():
        log_metadata(metadata={"mlflow_model": result, **metrics}, infer_model=True)
    return result


@step(experiment_tracker=True, enable_cache=False)
def gate_bundle(
    retrieval_metrics: dict[str, dict[str, float]],
    evaluation_report: EvaluationReport,
    model_name: str = "slipway",
    retrieval_margin: float = 0.01,
    answer_margin: float = 0.02,
) -> Annotated[dict[str, Any], "bundle_gate"]:
    """The whole-bundle gate of the ``challenger`` (the version this run registered): it
    becomes ``champion`` only when parity, retrieval on the evaluation set and answers on the
    QA set all pass, none worse than the champion's figures by more than its margin. The
    report (each gate, its figures and the champion's) goes to MLflow and the version's tags."""
    client = MlflowClient()
    try:
        version = str(client.get_model_version_by_alias(model_name, CHALLENGER).version)
    except MlflowException as exc:
        raise RuntimeError(
            f"No '{CHALLENGER}' version of {model_name!r}: the gate follows "
            "track_and_register(promote=False) in the same run."
        ) from exc
    answers = {} if evaluation_report.skipped else dict(evaluation_report.metrics)
    decision = settle(
        client,
        model_name,
        version,
        flat_metrics(retrieval_metrics),
        answers,
        retrieval_margin,
        answer_margin,
    )
    if mlflow.active_run() is not None:
        mlflow.log_text(decision.report(), "reports/bundle_gate.md")
        mlflow.set_tags({k: v for k, v in decision.tags().items()})
    result: dict[str, Any] = {
        "name": model_name,
        "version": version,
        "champion": decision.promote,
        "reason": decision.reason,
        "gates": {
            g.name: {"passed": g.passed, "reason": g.reason, **g.figures} for g in decision.gates
        },
    }
    if _has_model():
        log_metadata(metadata={"bundle_gate": result}, infer_model=True)
    return result
