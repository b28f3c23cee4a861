"""Tier 2: the model-build steps with a re-ranker (``reranker_path``) and a fine-tuned
embedder saved by sentence-transformers, through ``.entrypoint()`` on tiny models."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import mlflow
import numpy as np
import pytest

from slipway.onnx.bundle import OnnxBundle
from slipway.onnx.parity import ParityError
from slipway.retrieval.rerank import CrossEncoderReranker, OnnxReranker, bundle_reranker
from steps.models import load_base_models
from steps.onnx import export_models, measure_latency, optimize_models, parity_gate, quantize_models
from steps.registry import track_and_register
from tests.tiny_models import make_tiny_cross_encoder

ROLES = ["embedder", "reranker"]  # the generator's build is covered by test_steps.py
# Random tiny weights are int8's worst case for rank agreement; the gate's defaults are for
# trained models (see the MiniLM figures in the change's report).
LOOSE = {"rerank_min_spearman": 0.8, "rerank_min_kendall": 0.5, "rerank_max_mean_abs_diff": 1.0}


@pytest.fixture(scope="module")
def finetuned_embedder(tiny_embedder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny embedder re-saved by sentence-transformers, as a retraining run saves it."""
    from sentence_transformers import SentenceTransformer

    out = tmp_path_factory.mktemp("finetuned-embedder")
    SentenceTransformer(str(tiny_embedder), device="cpu", local_files_only=True).save(str(out))
    return out


@pytest.fixture(scope="module")
def cross_encoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_cross_encoder(tmp_path_factory.mktemp("cross-encoder"))


@pytest.fixture(scope="module")
def base_models(
    finetuned_embedder: Path, tiny_generator: Path, cross_encoder: Path
) -> dict[str, str]:
    return load_base_models.entrypoint(
        str(finetuned_embedder), str(tiny_generator), reranker_path=str(cross_encoder)
    )


@pytest.fixture(scope="module")
def quantized(base_models: dict[str, str]) -> OnnxBundle:
    exported = export_models.entrypoint(base_models, roles=ROLES)
    return quantize_models.entrypoint(optimize_models.entrypoint(exported))


def test_load_base_models_adds_the_reranker_only_when_given(
    base_models: dict[str, str], cross_encoder: Path, tiny_embedder: Path, tiny_generator: Path
) -> None:
    assert base_models["reranker"] == str(cross_encoder.resolve())
    assert base_models["reranker_origin"] == "local"
    plain = load_base_models.entrypoint(str(tiny_embedder), str(tiny_generator))
    assert set(plain) == {"embedder", "embedder_origin", "generator", "generator_origin"}
    with pytest.raises(RuntimeError, match="not a sequence-classification model"):
        load_base_models.entrypoint(
            str(tiny_embedder), str(tiny_generator), reranker_path=str(tiny_embedder)
        )


def test_steps_build_the_reranker_role(quantized: OnnxBundle, cross_encoder: Path) -> None:
    assert quantized.roles == ROLES and quantized.has_role("reranker")
    info = quantized.info("reranker")
    assert info["precision"] == "int8" and info["optimization"] == "O2"
    assert info["config"]["task"] == "text-classification"
    role = quantized.role_dir("reranker")
    assert {"model.onnx", "tokenizer.json", "tokenizer_config.json"} <= {
        p.name for p in role.iterdir()
    }
    onnx = bundle_reranker(quantized)
    assert isinstance(onnx, OnnxReranker)
    torch = CrossEncoderReranker(cross_encoder, max_length=onnx.max_length)
    passages = ["paris is the capital of france", "the quick brown fox", "hello world"]
    got = onnx.score("what is the capital of france", passages)
    ref = torch.score("what is the capital of france", passages)
    np.testing.assert_allclose(got, ref, rtol=0.2)  # int8, random weights: loosely


def test_parity_gate_checks_the_reranker(quantized: OnnxBundle) -> None:
    gated = parity_gate.entrypoint(quantized, n_texts=16, n_queries=6, **LOOSE)
    report = gated.manifest["parity"]
    assert report["embedder"]["passed"] and report["embedder"]["min_cosine"] > 0.99
    assert report["reranker"]["passed"] and report["reranker"]["n_pairs"] == 48
    with pytest.raises(ParityError, match="reranker.*nothing was registered"):
        parity_gate.entrypoint(quantized, n_texts=8, n_queries=2, rerank_min_spearman=1.01)


@pytest.fixture
def mlflow_uri(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A private MLflow store (see tests/steps/test_steps.py)."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    previous = mlflow.get_tracking_uri()
    mlflow.end_run()
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("slipway-reranker-test")
    yield uri
    mlflow.set_tracking_uri(previous)


def test_measure_and_register_with_a_reranker(
    quantized: OnnxBundle, tmp_path: Path, mlflow_uri: str
) -> None:
    gated = parity_gate.entrypoint(quantized, n_texts=8, n_queries=4, **LOOSE)
    measured = measure_latency.entrypoint(gated, rounds=2, batch=4)
    assert measured.manifest["latency"]["rerank_speedup"] > 0
    try:
        registered = track_and_register.entrypoint(measured, model_name="reranker-test")
    finally:
        mlflow.end_run()
    version = mlflow.MlflowClient().get_model_version("reranker-test", registered["version"])
    assert version.tags["roles"] == "embedder,reranker"
    run = mlflow.get_run(version.run_id)
    assert {"reranker_spearman", "reranker_kendall", "rerank_speedup"} <= set(run.data.metrics)
    assert run.data.params["reranker_task"] == "text-classification"
    local = mlflow.artifacts.download_artifacts(
        artifact_uri=registered["source"], dst_path=str(tmp_path / "dl")
    )
    bundle = OnnxBundle.load(Path(local))
    assert bundle.roles == ROLES and (bundle.role_dir("reranker") / "model.onnx").is_file()
    assert bundle.manifest["parity"]["reranker"]["passed"]
    assert isinstance(bundle_reranker(bundle), OnnxReranker)
