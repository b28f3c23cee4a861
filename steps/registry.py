"""Step: track the build in MLflow, register the bundle, move the champion alias."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Annotated

import mlflow
from mlflow import MlflowClient
from zenml import get_step_context, log_metadata, step
from zenml.exceptions import StepContextError

from slipway.onnx.bundle import OnnxBundle
from slipway.onnx.cpu import read_cpu_info
from slipway.onnx.evaluate import parity_metrics
from slipway.onnx.parity import parity_report_html
from slipway.onnx.session import default_providers
from slipway.onnx.stages import build_params, configs_from
from slipway.prompts import PROMPTS_FILE, Selection, serve_selection, sync_sources
from slipway.registry import BUNDLE_ARTIFACT_PATH, prompt_version_tags, register_bundle
from steps.onnx import BuildOverrides


def _in_pipeline() -> bool:
    try:
        get_step_context()
    except RuntimeError:
        return False
    return True


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
) -> Annotated[dict[str, str], "registered_model"]:
    """Log parameters, metrics and artifacts to MLflow; register the prompt sources (new
    versions where they changed) and the bundle with the prompt versions it serves
    (``prompts``: per kind a version, alias or ``{ref: weight}``; default ``latest``);
    maybe promote it."""
    run = mlflow.active_run() or mlflow.start_run()
    sync_sources(mlflow.get_tracking_uri())
    served = serve_selection(prompts, mlflow.get_tracking_uri())
    cpu = read_cpu_info()
    params = build_params(configs_from(build), cpu)
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
    prompt_tags = prompt_version_tags(served)
    mlflow.set_tags(prompt_tags)
    tags = {"roles": ",".join(bundle.roles), "cpu_isa": cpu.isa, **prompt_tags}
    if _in_pipeline():
        tags["zenml_run"] = get_step_context().pipeline_run.name
    version = register_bundle(
        MlflowClient(),
        model_name,
        mlflow.get_artifact_uri(BUNDLE_ARTIFACT_PATH),
        run.info.run_id,
        metrics,
        tags,
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
