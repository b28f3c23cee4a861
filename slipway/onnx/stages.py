"""The model-build stages over a whole bundle: export, optimize, quantize, gate, measure.

Each stage reads one bundle and writes a new one, so a pipeline step is a single call and
a crashed stage never leaves a half-written bundle behind as its output.
"""

from __future__ import annotations

import atexit
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

from slipway.config import Quantization
from slipway.models import ModelSource
from slipway.onnx import build
from slipway.onnx.build import BuildConfig, directory_size
from slipway.onnx.bundle import OnnxBundle
from slipway.onnx.cpu import CpuInfo, read_cpu_info

logger = logging.getLogger(__name__)

DEFAULT_CONFIGS: dict[str, BuildConfig] = {
    "embedder": BuildConfig(task="feature-extraction", runtime="ort", optimization="O2"),
    "generator": BuildConfig(task="text-generation-with-past", runtime="genai", optimization="O0"),
    # optional: built only when model_build is given a cross-encoder (reranker_path)
    "reranker": BuildConfig(task="text-classification", runtime="ort", optimization="O2"),
}
OPTIONAL_ROLES = ("reranker",)  # built only when a model for them is given


def _fresh_dir(prefix: str) -> Path:
    """A scratch directory removed when the process exits (after ZenML stored the outputs)."""
    path = Path(tempfile.mkdtemp(prefix=f"slipway-{prefix}-"))
    atexit.register(shutil.rmtree, path, True)
    return path


def _next_bundle(previous: OnnxBundle | None, stage: str) -> OnnxBundle:
    bundle = OnnxBundle.create(_fresh_dir(stage))
    if previous is not None:
        bundle.manifest.update({k: v for k, v in previous.manifest.items() if k != "models"})
    bundle.manifest.setdefault("stages", [])
    bundle.manifest["stages"] = [*bundle.manifest["stages"], stage]
    return bundle


def _info(config: BuildConfig, source: dict[str, str], **extra: Any) -> dict[str, Any]:
    return {"config": {k: str(v) for k, v in config.__dict__.items()}, "source": source, **extra}


def export_stage(sources: dict[str, ModelSource], configs: dict[str, BuildConfig]) -> OnnxBundle:
    """Export every base model to ONNX (fp32)."""
    bundle = _next_bundle(None, "export")
    for role, source in sources.items():
        config = configs[role]
        config.validate()
        work = _fresh_dir(f"export-{role}")
        if config.runtime == "genai":
            build.build_genai(source.path, work, config, build.genai_precision(config, final=False))
        else:
            build.export(source.path, work, config)
        bundle.add_model(role, work, _info(config, source.as_params(), precision="fp32"), move=True)
    return bundle


def optimize_stage(previous: OnnxBundle, configs: dict[str, BuildConfig]) -> OnnxBundle:
    """Graph optimization at each model's configured level."""
    bundle = _next_bundle(previous, "optimize")
    for role in previous.roles:
        config, info = configs[role], dict(previous.info(role))
        if config.runtime == "genai":
            info["optimization"] = "fused by the onnxruntime-genai model builder"
            bundle.add_model(role, previous.role_dir(role), info)
            continue
        work = build.optimize(previous.role_dir(role), _fresh_dir(f"opt-{role}"), config)
        bundle.add_model(role, work, {**info, "optimization": config.optimization}, move=True)
    return bundle


def quantize_stage(
    previous: OnnxBundle, configs: dict[str, BuildConfig], cpu: CpuInfo | None = None
) -> OnnxBundle:
    """Quantize each model for its target (int8 CPU, fp16 GPU, int4 genai, or off)."""
    cpu = cpu or read_cpu_info()
    bundle = _next_bundle(previous, "quantize")
    bundle.manifest["cpu"] = cpu.summary()
    for role in previous.roles:
        config, info = configs[role], dict(previous.info(role))
        mode = config.resolved_quantization()
        if config.runtime == "genai":
            precision = build.genai_precision(config, final=True)
            extra = {"precision": precision, "quantization": mode.value}
            if precision == info.get("precision"):
                bundle.add_model(role, previous.role_dir(role), {**info, **extra})
            else:
                work = build.build_genai(
                    previous.source_path(role), _fresh_dir(f"q-{role}"), config, precision
                )
                bundle.add_model(role, work, {**info, **extra}, move=True)
            continue
        work = build.quantize(previous.role_dir(role), _fresh_dir(f"q-{role}"), config, cpu)
        precision = "fp32" if mode is Quantization.OFF else mode.value
        extra = {"precision": precision, "quantization": mode.value, "isa": cpu.isa}
        bundle.add_model(role, work, {**info, **extra}, move=True)
    for role in bundle.roles:
        bundle.manifest["models"][role]["size_bytes"] = directory_size(bundle.role_dir(role))
    bundle.save()
    return bundle


def build_params(
    configs: dict[str, BuildConfig], cpu: CpuInfo, roles: list[str] | None = None
) -> dict[str, str]:
    """Flat parameters describing the build, for tracking; an optional role's only when it is
    among the built ``roles``."""
    params = {"cpu": cpu.summary(), "cpu_isa": cpu.isa}
    for role, config in configs.items():
        if role not in OPTIONAL_ROLES or role in (roles or ()):
            params.update(config.as_params(role))
    return params


def configs_from(overrides: dict[str, dict[str, Any]] | None) -> dict[str, BuildConfig]:
    """The default build configs with per-role overrides (from the run configuration)."""
    out = dict(DEFAULT_CONFIGS)
    for role, values in (overrides or {}).items():
        if role not in out:
            raise ValueError(
                f"Unknown model role {role!r} in build configs; use {'/'.join(DEFAULT_CONFIGS)}."
            )
        merged = {**out[role].__dict__, **values}
        if "quantization" in merged:
            merged["quantization"] = Quantization(merged["quantization"])
        if "target" in values:
            from slipway.config import Target

            merged["target"] = Target(merged["target"])
        for key in ("operators_to_quantize", "nodes_to_exclude", "exclude_patterns"):
            merged[key] = tuple(merged[key])
        out[role] = BuildConfig(**merged)
        out[role].validate()
    return out
