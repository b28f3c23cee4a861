"""Model build: base models -> ONNX -> optimize -> quantize -> parity gate -> latency -> MLflow
-> bento."""

from __future__ import annotations

from typing import Any

from zenml import pipeline

from slipway.onnx.calibration import CalibrationSet
from steps.bento import build_bento
from steps.models import load_base_models
from steps.onnx import export_models, measure_latency, optimize_models, parity_gate, quantize_models
from steps.registry import track_and_register


@pipeline(enable_cache=True)
def model_build(
    build: dict[str, dict[str, Any]] | None = None,
    roles: list[str] | None = None,
    model_name: str = "slipway",
    bento: bool = True,
    embedder_path: str | None = None,
    generator_path: str | None = None,
    reranker_path: str | None = None,
    calibration: CalibrationSet | None = None,
    prompts: dict[str, Any] | None = None,
    promote: bool = True,
    retrieval: dict[str, Any] | None = None,
) -> Any:
    """Build, check, register and package the embedder, the generator and, when given, a
    re-ranker. ``calibration``: the sample of the corpus the parity gate embeds (the main job
    passes its chunks' sample; run alone, the gate uses built-in texts). ``prompts``: the
    prompt version each served kind uses (``answer: latest``; ``answer: {"3": 0.5, "4": 0.5}``
    splits answers between two).
    ``promote=False`` (the main job) registers a ``challenger`` for the whole-bundle gate.
    ``reranker_path``: a trained cross-encoder, built into the bundle's ``reranker/`` (none
    without it). ``retrieval``: the tuned fusion the bundle carries (``retrieval.json``).
    Returns the registration (for steps that must run after it)."""
    base_models = load_base_models(
        embedder_path=embedder_path, generator_path=generator_path, reranker_path=reranker_path
    )
    exported = export_models(base_models, build=build, roles=roles)
    optimized = optimize_models(exported, build=build)
    quantized = quantize_models(optimized, build=build)
    gated = parity_gate(quantized, exported=exported, calibration=calibration)
    measured = measure_latency(gated, calibration=calibration)
    registered = track_and_register(
        measured,
        build=build,
        model_name=model_name,
        prompts=prompts,
        promote=promote,
        retrieval=retrieval,
    )
    if bento:
        build_bento(registered)
    return registered
