"""The cross-encoder re-ranker role: export, optimize, quantize, parity, and OnnxReranker."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from slipway.config import Quantization
from slipway.models import ModelSourceError, reranker_source
from slipway.onnx import evaluate, stages
from slipway.onnx.build import BuildConfig, BuildError, export
from slipway.onnx.bundle import OnnxBundle
from slipway.onnx.calibration import BUILTIN_TEXTS, calibration_pairs
from slipway.onnx.cpu import read_cpu_info
from slipway.onnx.parity import (
    ParityError,
    ParityThresholds,
    RerankerParity,
    raise_on_failure,
    rank_agreement,
)
from slipway.retrieval.rerank import (
    CrossEncoderReranker,
    OnnxReranker,
    bundle_reranker,
    configured_reranker,
    rerank,
)
from tests.tiny_models import make_tiny_cross_encoder

QUERY = "what is the capital of france"
PASSAGES = [
    "paris is the capital of france and a large city",
    "the quick brown fox jumps over the lazy dog",
    "onnx runtime runs transformer models fast on cpus",
    "write one sentence about the ocean",
    "slipway builds and serves language models " * 30,  # past max_length: truncated
    "hello world",
]


@pytest.fixture(scope="module")
def cross_encoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny cross-encoder saved by sentence-transformers' CrossEncoder.save."""
    return make_tiny_cross_encoder(tmp_path_factory.mktemp("tiny-cross-encoder"))


@pytest.fixture(scope="module")
def exported(cross_encoder: Path) -> OnnxBundle:
    """The re-ranker alone, exported to ONNX (fp32)."""
    return stages.export_stage({"reranker": reranker_source(cross_encoder)}, stages.DEFAULT_CONFIGS)


def _final(exported: OnnxBundle, overrides: dict[str, object]) -> OnnxBundle:
    configs = stages.configs_from({"reranker": overrides})
    return stages.quantize_stage(stages.optimize_stage(exported, configs), configs)


@pytest.fixture(scope="module")
def fp32_bundle(exported: OnnxBundle) -> OnnxBundle:
    """Exported and graph-optimized (O2), not quantized."""
    return _final(exported, {"quantization": "off"})


@pytest.fixture(scope="module")
def int8_bundle(exported: OnnxBundle) -> OnnxBundle:
    """The default build: O2 and dynamic int8 for this CPU."""
    return _final(exported, {})


def test_export_writes_a_pair_graph_with_tokenizer(exported: OnnxBundle) -> None:
    role = exported.role_dir("reranker")
    assert {"model.onnx", "tokenizer.json", "config_sentence_transformers.json"} <= {
        p.name for p in role.iterdir()
    }
    reranker = OnnxReranker(role)
    assert {"input_ids", "attention_mask", "token_type_ids"} <= reranker._inputs
    assert exported.info("reranker")["config"]["task"] == "text-classification"
    assert exported.roles == ["reranker"] and exported.has_role("reranker")
    assert not exported.has_role("embedder")


def test_optimized_fp32_scores_equal_the_torch_cross_encoder(
    fp32_bundle: OnnxBundle, cross_encoder: Path
) -> None:
    onnx = OnnxReranker(fp32_bundle.role_dir("reranker"))
    torch = CrossEncoderReranker(cross_encoder, max_length=onnx.max_length)
    assert fp32_bundle.info("reranker")["optimization"] == "O2"
    assert onnx.max_length == 128  # the tiny BERT's position embeddings cap the tokenizer's
    encodings = onnx.encode(QUERY, PASSAGES)
    assert len(encodings[4].ids) == 128 and encodings[0].type_ids[-1] == 1  # passage: type 1
    got, ref = np.array(onnx.score(QUERY, PASSAGES)), np.array(torch.score(QUERY, PASSAGES))
    np.testing.assert_allclose(got, ref, rtol=1e-3, atol=1e-6)
    assert list(np.argsort(-got)) == list(np.argsort(-ref))
    logits = onnx.logits(QUERY, PASSAGES)
    assert logits.std() > 0.1  # the pairs differ, so the ranking above means something
    np.testing.assert_allclose(got, 1 / (1 + np.exp(-logits)), rtol=1e-6)  # saved: sigmoid
    # a query longer than the model's length: both sides truncated, still as PyTorch does
    long_query = " ".join(["paris capital france"] * 60)
    np.testing.assert_allclose(
        onnx.score(long_query, PASSAGES[:3]), torch.score(long_query, PASSAGES[:3]), rtol=1e-3
    )
    assert onnx.score(QUERY, []) == []


def test_int8_build_keeps_the_ranking_within_bounds(int8_bundle: OnnxBundle) -> None:
    import onnx

    info = int8_bundle.info("reranker")
    assert info["precision"] == "int8" and info["size_bytes"] > 0
    graph = onnx.load(str(int8_bundle.role_dir("reranker") / "model.onnx")).graph
    assert any(n.op_type in ("MatMulInteger", "DynamicQuantizeLinear") for n in graph.node)
    kept = [n.name for n in graph.node if n.op_type == "MatMul" and "/output/dense/" in n.name]
    assert kept, "the FFN output projections stay fp32 (exclude_patterns)"
    report = evaluate.parity(int8_bundle, ParityThresholds(), n_queries=8)
    part = report["reranker"]
    assert part["n_queries"] == 8 and part["n_pairs"] == 64
    # random tiny weights are int8's worst case; a trained MiniLM measured far tighter
    assert part["spearman"] > 0.9 and part["top1_agreement"] >= 0.5
    assert 0 < part["mean_abs_diff"] <= part["max_abs_diff"] < 1.0
    assert int8_bundle.manifest["parity"]["reranker"] == part
    metrics = evaluate.parity_metrics(report)
    assert {"reranker_spearman", "reranker_kendall", "reranker_max_abs_diff"} <= set(metrics)


def test_parity_gate_fails_on_rank_disagreement(fp32_bundle: OnnxBundle) -> None:
    strict = ParityThresholds(rerank_min_kendall=1.01)  # fp32 agrees, but not this much
    report = evaluate.parity(fp32_bundle, strict, n_queries=4)
    assert report["reranker"]["kendall"] > 0.99 and not report["reranker"]["passed"]
    with pytest.raises(ParityError, match="reranker.*nothing was registered"):
        raise_on_failure(report)
    loose = evaluate.parity(fp32_bundle, ParityThresholds(), n_queries=4)
    assert loose["reranker"]["passed"] and loose["reranker"]["max_abs_diff"] < 1e-4


def test_latency_times_the_reranker_against_torch(int8_bundle: OnnxBundle, tmp_path: Path) -> None:
    bundle = int8_bundle.copy_to(tmp_path / "bundle")
    metrics = evaluate.latency(bundle, rounds=2, batch=6)
    assert metrics["rerank_speedup"] > 0 and metrics["rerank_onnx_p50_ms"] > 0
    assert metrics["reranker_size_mb"] > 0 and bundle.manifest["latency"] == metrics


def test_bundle_reranker_and_configured_reranker(
    int8_bundle: OnnxBundle, cross_encoder: Path, tmp_path: Path, tiny_onnx_embedder: Path
) -> None:
    loaded = bundle_reranker(OnnxBundle.load(int8_bundle.root))
    assert isinstance(loaded, OnnxReranker)
    scores = loaded.score(QUERY, PASSAGES)
    order = [t for t, _ in rerank(loaded, QUERY, [(t, 0.0) for t in PASSAGES], PASSAGES, 6)]
    assert order == [PASSAGES[i] for i in np.argsort(-np.array(scores), kind="stable")]
    without = OnnxBundle.create(tmp_path / "empty")
    without.add_model("embedder", tiny_onnx_embedder, {"precision": "fp32"})
    assert not without.has_role("reranker") and bundle_reranker(without) is None
    assert configured_reranker(None, without) is None and configured_reranker(None) is None
    assert isinstance(configured_reranker(None, int8_bundle), OnnxReranker)
    onnx_dir = int8_bundle.role_dir("reranker")
    assert isinstance(configured_reranker(onnx_dir, without), OnnxReranker)
    assert isinstance(configured_reranker(cross_encoder), CrossEncoderReranker)


def test_identity_activation_returns_the_logits(fp32_bundle: OnnxBundle, tmp_path: Path) -> None:
    role = fp32_bundle.copy_to(tmp_path / "b").role_dir("reranker")
    config = role / "config_sentence_transformers.json"
    saved = json.loads(config.read_text())
    config.write_text(json.dumps({**saved, "activation_fn": "torch.nn.modules.linear.Identity"}))
    reranker = OnnxReranker(role)
    np.testing.assert_allclose(reranker.score(QUERY, PASSAGES), reranker.logits(QUERY, PASSAGES))
    config.write_text(json.dumps({**saved, "activation_fn": "my.module.Custom"}))
    with pytest.raises(ValueError, match="activation"):
        OnnxReranker(role)


def test_not_a_cross_encoder_is_refused_clearly(
    tiny_embedder: Path, tiny_onnx_embedder: Path, tmp_path: Path
) -> None:
    with pytest.raises(ModelSourceError, match="not a sequence-classification model"):
        reranker_source(tiny_embedder)
    with pytest.raises(ModelSourceError, match="no config.json"):
        reranker_source(tmp_path)
    with pytest.raises(BuildError, match="not a sequence-classification model"):
        export(tiny_embedder, tmp_path / "out", BuildConfig(task="text-classification"))
    two = make_tiny_cross_encoder(tmp_path / "two-labels", num_labels=2)
    with pytest.raises(ModelSourceError, match="2 labels"):
        reranker_source(two)
    with pytest.raises(ValueError, match="not a re-ranker graph"):
        OnnxReranker(tiny_onnx_embedder)
    with pytest.raises(FileNotFoundError, match="model.onnx"):
        OnnxReranker(tmp_path)
    with pytest.raises(BuildError, match="runtime: ort"):
        BuildConfig(task="text-classification", runtime="genai").validate()


def test_configs_and_params_of_the_optional_role() -> None:
    configs = stages.configs_from({"reranker": {"quantization": "off", "optimization": "O1"}})
    assert configs["reranker"].task == "text-classification"
    assert configs["reranker"].quantization is Quantization.OFF
    cpu = read_cpu_info()
    assert "reranker_task" not in stages.build_params(configs, cpu, ["embedder", "generator"])
    assert "embedder_task" in stages.build_params(configs, cpu, ["embedder", "generator"])
    assert stages.build_params(configs, cpu, ["embedder", "reranker"])["reranker_optimization"] == (
        "O1"
    )


def test_calibration_pairs_hold_each_question_with_its_passage() -> None:
    groups = calibration_pairs(None, n_queries=5, per_query=4, seed=3)
    assert len(groups) == 5 and all(len(c) == 4 and len(set(c)) == 4 for _, c in groups)
    assert all(len(c[0]) > 100 and set(c[1:]) <= set(BUILTIN_TEXTS) for _, c in groups)
    assert groups == calibration_pairs(None, n_queries=5, per_query=4, seed=3)
    corpus = [f"chunk number {i} of the user's corpus" for i in range(200)]
    mixed = calibration_pairs(corpus, n_queries=4, per_query=9)
    others = [t for _, c in mixed for t in c[1:]]
    assert set(others) <= set(corpus) | set(BUILTIN_TEXTS)  # the sample, topped up as embedder's
    assert sum(t in corpus for t in others) > len(others) // 2
    builtin = calibration_pairs(None, n_queries=3, per_query=2, questions=None)
    assert len(builtin) == 3 and all(len(c) == 2 for _, c in builtin)


def test_reranker_parity_checks_every_bound() -> None:
    def part(**changes: float) -> RerankerParity:
        figures = {"max_abs_diff": 1.1, "mean_abs_diff": 0.1, "spearman": 0.998, "kendall": 0.95}
        return RerankerParity(
            4,
            32,
            min_kendall=0.7,
            top1_agreement=1.0,
            worst_pair="q || p",
            **{**figures, **changes},
        )

    thresholds = ParityThresholds()
    assert part().check(thresholds).passed  # the trained MiniLM's int8 figures pass
    for bad in ({"spearman": 0.97}, {"kendall": 0.85}, {"mean_abs_diff": 0.3}, {"max_abs_diff": 2}):
        assert not part(**bad).check(thresholds).passed, bad
    same = [np.array([3.0, 1.0, 2.0]), np.array([0.5, 0.4])]
    swapped = [np.array([1.0, 3.0, 2.0]), np.array([0.5, 0.4])]
    rho, taus, top1 = rank_agreement(same, same)
    assert rho == pytest.approx(1.0) and taus == [pytest.approx(1.0)] * 2 and top1 == 1.0
    rho, taus, top1 = rank_agreement(swapped, same)
    assert rho < 1.0 and taus[0] == pytest.approx(-1.0) and top1 == 0.5
    assert rank_agreement([np.ones(3)], [np.array([1.0, 2.0, 3.0])])[1] == [0.0]  # undefined
    # a reference that barely orders its candidates (untrained): only the differences count
    flat = {"spearman": 0.3, "kendall": 0.2, "max_abs_diff": 1e-3, "mean_abs_diff": 3e-4}
    assert part(**flat, reference_spread=0.002).check(thresholds).passed
    assert not part(**flat, reference_spread=0.5).check(thresholds).passed
    assert not part(**{**flat, "max_abs_diff": 2}, reference_spread=0.002).check(thresholds).passed
