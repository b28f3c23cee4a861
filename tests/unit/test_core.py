"""Tier 1: pure functions of the slipway core."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from slipway.config import Quantization, Target
from slipway.embedding import PoolingConfig, cosine_rows, pool
from slipway.generation import _partial_stop_len, _stop_index
from slipway.onnx.build import BuildConfig, BuildError, genai_precision
from slipway.onnx.bundle import BundleError, OnnxBundle
from slipway.onnx.calibration import (
    BUILTIN_PROMPTS,
    BUILTIN_TEXTS,
    calibration_prompts,
    calibration_set,
    calibration_texts,
)
from slipway.onnx.cpu import CpuInfo, read_cpu_info
from slipway.onnx.latency import interleaved
from slipway.onnx.parity import (
    GeneratorParity,
    ParityError,
    ParityThresholds,
    kl_divergence,
    parity_report_html,
    raise_on_failure,
)
from slipway.onnx.stages import configs_from
from slipway.registry import not_worse


def test_mean_pooling_ignores_padding_and_normalises() -> None:
    hidden = np.array([[[1.0, 0.0], [3.0, 0.0], [100.0, 100.0]]], dtype=np.float32)
    mask = np.array([[1, 1, 0]])
    out = pool(hidden, mask, PoolingConfig(mode="mean", normalize=False))
    np.testing.assert_allclose(out, [[2.0, 0.0]])
    unit = pool(hidden, mask, PoolingConfig(mode="mean", normalize=True))
    np.testing.assert_allclose(np.linalg.norm(unit, axis=1), [1.0], rtol=1e-6)


def test_cls_and_max_pooling() -> None:
    hidden = np.array([[[1.0, 5.0], [3.0, -1.0], [9.0, 9.0]]], dtype=np.float32)
    mask = np.array([[1, 1, 0]])
    np.testing.assert_allclose(pool(hidden, mask, PoolingConfig("cls", False)), [[1.0, 5.0]])
    np.testing.assert_allclose(pool(hidden, mask, PoolingConfig("max", False)), [[3.0, 5.0]])


def test_pooling_config_reads_sentence_transformers_files(tiny_embedder: Path) -> None:
    config = PoolingConfig.from_model_dir(tiny_embedder)
    assert config == PoolingConfig(mode="mean", normalize=True, max_length=64)


def test_cosine_rows() -> None:
    a = np.array([[1.0, 0.0], [0.0, 2.0]])
    b = np.array([[1.0, 0.0], [0.0, -1.0]])
    np.testing.assert_allclose(cosine_rows(a, b), [1.0, -1.0])


def test_kl_divergence_zero_for_equal_and_positive_otherwise() -> None:
    logits = np.array([1.0, 2.0, 3.0])
    assert kl_divergence(logits, logits) == pytest.approx(0.0, abs=1e-12)
    assert kl_divergence(logits, logits + 5.0) == pytest.approx(0.0, abs=1e-9)  # shift-invariant
    assert kl_divergence(logits, np.array([3.0, 2.0, 1.0])) > 0.5


def test_cpu_isa_choice(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        "model name\t: Test CPU\nflags\t\t: sse avx2 fma avx512f avx512bw avx512_vnni\n"
    )
    info = read_cpu_info(cpuinfo)
    assert info.model == "Test CPU" and info.isa == "avx512_vnni"
    assert CpuInfo("x", frozenset({"avx2", "fma"}), 2).isa == "avx2"
    assert CpuInfo("x", frozenset({"avx2", "avx512f", "avx512bw"}), 2).isa == "avx512"
    assert "isa=" in read_cpu_info().summary()


def test_build_config_rejects_gpu_only_settings_on_cpu() -> None:
    with pytest.raises(BuildError, match="O4"):
        BuildConfig(task="feature-extraction", optimization="O4").validate()
    with pytest.raises(BuildError, match="fp16"):
        BuildConfig(task="feature-extraction", quantization=Quantization.FP16).validate()
    with pytest.raises(BuildError, match="int4"):
        BuildConfig(task="feature-extraction", quantization=Quantization.INT4).validate()
    gpu = BuildConfig(task="feature-extraction", optimization="O4", target=Target.GPU)
    gpu.validate()
    assert gpu.resolved_quantization() is Quantization.FP16
    assert BuildConfig(task="feature-extraction").resolved_quantization() is Quantization.INT8


def test_genai_precision_follows_quantization() -> None:
    config = BuildConfig(
        task="text-generation-with-past", runtime="genai", quantization=Quantization.INT4
    )
    assert genai_precision(config, final=False) == "fp32"
    assert genai_precision(config, final=True) == "int4"


def test_configs_from_overrides_and_errors() -> None:
    configs = configs_from({"embedder": {"quantization": "off", "optimization": "O1"}})
    assert configs["embedder"].quantization is Quantization.OFF
    assert configs["embedder"].optimization == "O1"
    assert configs["generator"].runtime == "genai"
    with pytest.raises(ValueError, match="Unknown model role"):
        configs_from({"ranker": {}})
    with pytest.raises(ValueError):
        configs_from({"embedder": {"quantization": "int3"}})


def test_bundle_round_trip_and_errors(tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    (model / "model.onnx").write_bytes(b"onnx")
    bundle = OnnxBundle.create(tmp_path / "bundle")
    bundle.add_model("embedder", model, {"precision": "int8"})
    bundle.record("parity", {"embedder": {"passed": True}})
    again = OnnxBundle.load(tmp_path / "bundle")
    assert again.roles == ["embedder"]
    assert again.info("embedder")["precision"] == "int8"
    assert (again.role_dir("embedder") / "model.onnx").read_bytes() == b"onnx"
    with pytest.raises(BundleError, match="no generator"):
        again.info("generator")
    with pytest.raises(BundleError, match="not an ONNX bundle"):
        OnnxBundle.load(tmp_path / "model")
    with pytest.raises(BundleError, match="not empty"):
        OnnxBundle.create(tmp_path / "bundle")


def test_parity_gate_thresholds_and_report() -> None:
    fp32 = GeneratorParity(
        10, exact_match=0.9, token_agreement=1.0, mean_kl=0.0, max_kl=0.0, quantized=False
    ).check(ParityThresholds())
    assert not fp32.passed  # fp32 must reproduce >= 95 % of greedy outputs exactly
    int8 = GeneratorParity(
        10, exact_match=0.2, token_agreement=0.95, mean_kl=0.01, max_kl=0.1, quantized=True
    ).check(ParityThresholds())
    assert int8.passed
    report = {"generator": {**fp32.__dict__}}
    with pytest.raises(ParityError, match="nothing was registered"):
        raise_on_failure(report)
    assert "FAIL" in parity_report_html(report)
    raise_on_failure({"generator": {**int8.__dict__}})


def test_promotion_requires_not_worse() -> None:
    ok, _ = not_worse({"embedder_min_cosine": 0.995}, {"embedder_min_cosine": 0.994})
    assert ok
    ok, reason = not_worse({"embedder_min_cosine": 0.98}, {"embedder_min_cosine": 0.994})
    assert not ok and "embedder_min_cosine" in reason
    assert not_worse({}, {"embedder_min_cosine": 0.9})[0]


def test_stop_strings() -> None:
    assert _stop_index("hello END world", ("END",)) == 6
    assert _stop_index("hello", ("END",)) is None
    assert _partial_stop_len("hello EN", ("END",)) == 2
    assert _partial_stop_len("hello", ("END",)) == 0


def test_interleaved_timing_counts_units() -> None:
    fast, slow = interleaved(lambda: 10, lambda: 5, rounds=3, warmup=0)
    assert len(fast.latencies) == len(slow.latencies) == 3
    assert fast.units_per_call == 10 and slow.units_per_call == 5
    assert set(fast.as_metrics()) == {"onnx_throughput", "onnx_p50_ms", "onnx_p95_ms"}


def test_calibration_sets_without_and_with_a_corpus(tmp_path: Path) -> None:
    assert calibration_texts(None) == list(BUILTIN_TEXTS)  # model_build alone: no corpus
    chunks = [f"chunk {i}" for i in range(50)] + ["chunk 3", "   "]  # a repeat and a blank
    sample = calibration_set(chunks, "mail.csv", limit=40, seed=7)
    assert sample.source == "mail.csv" and len(sample.texts) == 40 == len(set(sample.texts))
    assert sample == calibration_set(chunks, "mail.csv", limit=40, seed=7)  # seeded
    assert sample.texts != calibration_set(chunks, "mail.csv", limit=40, seed=8).texts
    assert calibration_texts(sample.texts, limit=16) == sample.texts[:16]  # corpus texts only
    small = calibration_texts(["only one chunk"], limit=4)  # topped up with built-in texts
    assert small == ["only one chunk", *BUILTIN_TEXTS[:3]]
    # prompts: questions of the packaged demo set, then built-in ones; no ../shared involved
    prompts = calibration_prompts(limit=6)
    assert len(prompts) == 6 and prompts[3:] == list(BUILTIN_PROMPTS[:3])
    assert prompts == calibration_prompts(limit=6)
    assert calibration_prompts(limit=4, questions=tmp_path / "none.jsonl") == list(
        BUILTIN_PROMPTS[:4]
    )
