"""Steps: export, optimize, quantize, parity gate and latency of the ONNX bundle."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any

from zenml import step

from materializers.onnx_bundle import OnnxBundleMaterializer
from slipway.config import get_settings
from slipway.models import ModelSource
from slipway.onnx import evaluate, stages
from slipway.onnx.bundle import ROLES, OnnxBundle
from slipway.onnx.calibration import CalibrationSet
from slipway.onnx.parity import ParityThresholds, raise_on_failure
from steps.common import SLIPWAY_CACHE

logger = logging.getLogger(__name__)
BuildOverrides = dict[str, dict[str, Any]] | None


def _sources(base_models: dict[str, str], roles: list[str] | None) -> dict[str, ModelSource]:
    wanted = roles or [r for r in ROLES if r in base_models]
    return {r: ModelSource(r, Path(base_models[r]), base_models[f"{r}_origin"]) for r in wanted}


@step(cache_policy=SLIPWAY_CACHE, output_materializers=OnnxBundleMaterializer)
def export_models(
    base_models: dict[str, str], build: BuildOverrides = None, roles: list[str] | None = None
) -> Annotated[OnnxBundle, "exported_bundle"]:
    """Export each base model to ONNX with optimum (or the genai model builder)."""
    return stages.export_stage(_sources(base_models, roles), stages.configs_from(build))


@step(cache_policy=SLIPWAY_CACHE, output_materializers=OnnxBundleMaterializer)
def optimize_models(
    bundle: OnnxBundle, build: BuildOverrides = None
) -> Annotated[OnnxBundle, "optimized_bundle"]:
    """ORT graph optimization at each model's configured level (O1-O4)."""
    return stages.optimize_stage(bundle, stages.configs_from(build))


@step(cache_policy=SLIPWAY_CACHE, output_materializers=OnnxBundleMaterializer)
def quantize_models(
    bundle: OnnxBundle, build: BuildOverrides = None
) -> Annotated[OnnxBundle, "quantized_bundle"]:
    """int8 for this CPU, fp16 for GPU targets, int4 for genai generators, or off."""
    return stages.quantize_stage(bundle, stages.configs_from(build))


@step(cache_policy=SLIPWAY_CACHE, output_materializers=OnnxBundleMaterializer)
def parity_gate(
    bundle: OnnxBundle,
    exported: OnnxBundle | None = None,
    calibration: CalibrationSet | None = None,
    embed_min_cosine: float = 0.99,
    gen_min_exact_match: float = 0.95,
    gen_quantized_min_token_agreement: float = 0.9,
    gen_max_mean_kl: float = 0.05,
    rerank_min_spearman: float = 0.98,
    rerank_min_kendall: float = 0.9,
    rerank_max_mean_abs_diff: float = 0.25,
    rerank_max_abs_diff: float = 1.5,
    rerank_min_spread: float = 0.05,
    n_texts: int = 128,
    n_prompts: int = 20,
    max_new_tokens: int = 32,
    n_queries: int = 16,
) -> Annotated[OnnxBundle, "gated_bundle"]:
    """Compare the final models (and a quantized generator's fp32 export) with PyTorch, the
    embedder on ``calibration`` (a sample of the corpus; built-in texts without one), a
    re-ranker on ``n_queries`` demo questions with candidates from that sample."""
    thresholds = ParityThresholds(
        embed_min_cosine=embed_min_cosine,
        gen_min_exact_match=gen_min_exact_match,
        gen_quantized_min_token_agreement=gen_quantized_min_token_agreement,
        gen_max_mean_kl=gen_max_mean_kl,
        rerank_min_spearman=rerank_min_spearman,
        rerank_min_kendall=rerank_min_kendall,
        rerank_max_mean_abs_diff=rerank_max_mean_abs_diff,
        rerank_max_abs_diff=rerank_max_abs_diff,
        rerank_min_spread=rerank_min_spread,
    )
    logger.info("Parity on %s", calibration.summary() if calibration else "built-in texts")
    report = evaluate.parity(
        bundle,
        thresholds,
        calibration.texts if calibration else None,
        n_texts,
        n_prompts,
        max_new_tokens,
        get_settings().threads,
        exported=exported,
        n_queries=n_queries,
    )
    raise_on_failure(report)
    return bundle


@step(cache_policy=SLIPWAY_CACHE, output_materializers=OnnxBundleMaterializer)
def measure_latency(
    bundle: OnnxBundle,
    calibration: CalibrationSet | None = None,
    rounds: int = 5,
    batch: int = 32,
    new_tokens: int = 32,
) -> Annotated[OnnxBundle, "measured_bundle"]:
    """Latency and throughput of each ONNX model against its PyTorch original (the embedder
    on a batch of ``calibration`` texts, a re-ranker on one query with ``batch`` candidates)."""
    evaluate.latency(
        bundle,
        calibration.texts if calibration else None,
        rounds,
        batch,
        new_tokens,
        get_settings().threads,
        plot_path=bundle.root / "latency.png",
    )
    return bundle
