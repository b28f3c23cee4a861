"""Shared set-up of the benchmarks: machine description and the bundle under test."""

from __future__ import annotations

import argparse
import os
import platform
from pathlib import Path

import onnxruntime as ort

from slipway.config import get_settings
from slipway.models import embedder_source, generator_source
from slipway.onnx import stages
from slipway.onnx.bundle import OnnxBundle
from slipway.onnx.cpu import read_cpu_info

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def print_machine(threads: int) -> None:
    """CPU model, flags, threads and onnxruntime providers."""
    print(f"machine: {platform.platform()} | python {platform.python_version()}")
    print(f"cpu: {read_cpu_info().summary()}")
    print(f"threads: {threads} | onnxruntime {ort.__version__} providers: {ort.get_available_providers()}")


def parser(description: str) -> argparse.ArgumentParser:
    """Arguments every benchmark takes."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--bundle", type=Path, help="A built bundle (default: build one with defaults).")
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--quantization", help="Build with this quantization (int8, int4, off) "
                   "instead of the default; ignored with --bundle.")
    return p


def bundle_for(role: str, given: Path | None, quantization: str | None = None) -> OnnxBundle:
    """The bundle to measure: the one given, or ``role`` built (default config or ``quantization``)."""
    if given is not None:
        return OnnxBundle.load(given)
    cache = get_settings().cache_dir
    source = embedder_source() if role == "embedder" else generator_source(None, cache)
    configs = stages.configs_from({role: {"quantization": quantization}} if quantization else None)
    bundle = stages.export_stage({role: source}, configs)
    bundle = stages.optimize_stage(bundle, configs)
    return stages.quantize_stage(bundle, configs)
