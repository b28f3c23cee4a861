"""Tier 2: steps called through ``.entrypoint()`` on tiny models built from configs."""

from __future__ import annotations

import os
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from slipway.onnx.bundle import OnnxBundle
from slipway.onnx.parity import ParityError
from steps.models import load_base_models
from steps.onnx import export_models, measure_latency, optimize_models, parity_gate, quantize_models
from steps.registry import track_and_register

BUILD = {"generator": {"quantization": "int8"}}


@pytest.fixture(scope="module")
def base_models(tiny_embedder: Path, tiny_generator: Path) -> dict[str, str]:
    return load_base_models.entrypoint(str(tiny_embedder), str(tiny_generator))


@pytest.fixture(scope="module")
def quantized(base_models: dict[str, str]) -> OnnxBundle:
    exported = export_models.entrypoint(base_models, build=BUILD)
    assert exported.roles == ["embedder", "generator"]
    assert (exported.role_dir("embedder") / "model.onnx").is_file()
    assert (exported.role_dir("generator") / "genai_config.json").is_file()
    optimized = optimize_models.entrypoint(exported, build=BUILD)
    assert optimized.info("embedder")["optimization"] == "O2"
    return quantize_models.entrypoint(optimized, build=BUILD)


def test_load_base_models_rejects_a_non_model_directory(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="SLIPWAY_EMBEDDER_PATH"):
        load_base_models.entrypoint(str(tmp_path), None)


def test_quantize_records_precision_and_isa(quantized: OnnxBundle) -> None:
    embedder = quantized.info("embedder")
    assert embedder["precision"] == "int8" and embedder["isa"] in {"avx2", "avx512", "avx512_vnni", "arm64"}
    assert quantized.info("generator")["precision"] == "int8"
    assert quantized.manifest["stages"] == ["export", "optimize", "quantize"]
    import onnx

    graph = onnx.load(str(quantized.role_dir("embedder") / "model.onnx")).graph
    assert any(n.op_type in ("MatMulInteger", "DynamicQuantizeLinear") for n in graph.node)


def test_parity_gate_passes_and_records_report(quantized: OnnxBundle) -> None:
    gated = parity_gate.entrypoint(quantized, n_texts=16, n_prompts=4, max_new_tokens=8)
    report = gated.manifest["parity"]
    assert report["embedder"]["passed"] and report["embedder"]["min_cosine"] > 0.99
    assert report["generator"]["n_prompts"] == 4


def test_parity_gate_fails_with_a_readable_report(quantized: OnnxBundle) -> None:
    with pytest.raises(ParityError, match="embedder.*nothing was registered"):
        parity_gate.entrypoint(quantized, embed_min_cosine=1.01, n_texts=8, n_prompts=2,
                               max_new_tokens=4)


def test_measure_and_register(quantized: OnnxBundle, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    gated = parity_gate.entrypoint(quantized, n_texts=8, n_prompts=2, max_new_tokens=4)
    measured = measure_latency.entrypoint(gated, rounds=2, batch=4, new_tokens=4)
    assert measured.manifest["latency"]["embed_speedup"] > 0
    try:
        first = track_and_register.entrypoint(measured, build=BUILD, model_name="steps-test")
    finally:
        mlflow.end_run()
    assert first["champion"] == "true" and first["version"] == "1"
    client = MlflowClient(tracking_uri=os.environ["MLFLOW_TRACKING_URI"])
    assert str(client.get_model_version_by_alias("steps-test", "champion").version) == "1"
    # A worse candidate is registered but does not take the alias.
    worse = OnnxBundle.load(measured.root)
    worse.manifest["parity"]["embedder"]["min_cosine"] -= 0.5
    try:
        second = track_and_register.entrypoint(worse, build=BUILD, model_name="steps-test")
    finally:
        mlflow.end_run()
    assert second["version"] == "2" and second["champion"] == "false"
    assert str(client.get_model_version_by_alias("steps-test", "champion").version) == "1"
    local = mlflow.artifacts.download_artifacts(artifact_uri=second["source"], dst_path=str(tmp_path / "dl"))
    assert OnnxBundle.load(Path(local)).roles == ["embedder", "generator"]
