"""Tier 2: steps called through ``.entrypoint()`` on tiny models built from configs."""

from __future__ import annotations

from collections.abc import Iterator
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
def exported(base_models: dict[str, str]) -> OnnxBundle:
    return export_models.entrypoint(base_models, build=BUILD)


@pytest.fixture(scope="module")
def quantized(exported: OnnxBundle) -> OnnxBundle:
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
    assert embedder["precision"] == "int8" and embedder["isa"] in {
        "avx2",
        "avx512",
        "avx512_vnni",
        "arm64",
    }
    assert quantized.info("generator")["precision"] == "int8"
    assert quantized.manifest["stages"] == ["export", "optimize", "quantize"]
    import onnx

    graph = onnx.load(str(quantized.role_dir("embedder") / "model.onnx")).graph
    assert any(n.op_type in ("MatMulInteger", "DynamicQuantizeLinear") for n in graph.node)


def test_parity_gate_passes_and_records_report(quantized: OnnxBundle, exported: OnnxBundle) -> None:
    gated = parity_gate.entrypoint(
        quantized, exported=exported, n_texts=16, n_prompts=4, max_new_tokens=8
    )
    report = gated.manifest["parity"]
    assert report["embedder"]["passed"] and report["embedder"]["min_cosine"] > 0.99
    assert report["generator"]["n_prompts"] == 4 and report["generator"]["quantized"]
    # The fp32 export is held to exact greedy agreement with PyTorch.
    assert (
        report["generator_fp32"]["exact_match"] == 1.0 and not report["generator_fp32"]["quantized"]
    )


def test_parity_gate_fails_with_a_readable_report(quantized: OnnxBundle) -> None:
    with pytest.raises(ParityError, match="embedder.*nothing was registered"):
        parity_gate.entrypoint(
            quantized, embed_min_cosine=1.01, n_texts=8, n_prompts=2, max_new_tokens=4
        )


@pytest.fixture
def mlflow_uri(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A private MLflow store. A ZenML run earlier in the session leaves mlflow's process-wide
    tracking URI and experiment set, so both are pointed here explicitly; the URI is restored."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    previous = mlflow.get_tracking_uri()
    mlflow.end_run()
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("slipway-steps-test")
    yield uri
    mlflow.set_tracking_uri(previous)


def test_measure_and_register(quantized: OnnxBundle, tmp_path: Path, mlflow_uri: str) -> None:
    gated = parity_gate.entrypoint(quantized, n_texts=8, n_prompts=2, max_new_tokens=4)
    measured = measure_latency.entrypoint(gated, rounds=2, batch=4, new_tokens=4)
    assert measured.manifest["latency"]["embed_speedup"] > 0
    try:
        first = track_and_register.entrypoint(measured, build=BUILD, model_name="steps-test")
    finally:
        mlflow.end_run()
    assert first["champion"] == "true" and first["version"] == "1"
    client = MlflowClient(tracking_uri=mlflow_uri)
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
    local = mlflow.artifacts.download_artifacts(
        artifact_uri=second["source"], dst_path=str(tmp_path / "dl")
    )
    assert OnnxBundle.load(Path(local)).roles == ["embedder", "generator"]


def test_preprocess_and_chunk_steps(tmp_path: Path, tiny_embedder: Path) -> None:
    from steps.documents import chunk_corpus, preprocess_documents

    csv_path = tmp_path / "docs.csv"
    csv_path.write_text(
        "doc,body,kind\nd1,the quick brown fox jumps over the lazy dog,a\n"
        "d2,paris is the capital of france and a large city,b\n"
    )
    docs = preprocess_documents.entrypoint(
        corpus=str(csv_path),
        csv_id_column="doc",
        csv_text_column="body",
        csv_title_column=None,
        csv_metadata_columns=["kind"],
        min_chars=10,
    )
    assert [d.id for d in docs.documents] == ["d1", "d2"]
    assert docs.documents[1].metadata == {"kind": "b"}
    chunks = chunk_corpus.entrypoint(
        docs, chunk_tokens=8, overlap_tokens=2, embedder_path=str(tiny_embedder)
    )
    assert {c.doc_id for c in chunks.chunks} == {"d1", "d2"}
    assert all(c.n_tokens <= 8 for c in chunks.chunks) and len(chunks.chunks) > 2
