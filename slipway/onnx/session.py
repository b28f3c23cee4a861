"""onnxruntime sessions: provider choice and thread settings in one place."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import onnxruntime as ort

logger = logging.getLogger(__name__)


def default_providers(requested: list[str] | None = None) -> list[str]:
    """CUDA when onnxruntime has it (onnxruntime-gpu on a GPU machine), else CPU."""
    available = ort.get_available_providers()
    if requested:
        missing = [p for p in requested if p not in available]
        if missing:
            raise RuntimeError(
                f"onnxruntime providers {missing} are not available here (have {available}); "
                "install the 'gpu' extra on a CUDA machine or drop SLIPWAY_PROVIDERS."
            )
        return requested
    if "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def session_options(threads: int = 0, spinning: bool = True) -> ort.SessionOptions:
    """Session options with all graph optimizations and ``threads`` intra-op threads.
    ``spinning=False`` stops idle intra-op threads from busy-waiting for the next run: a
    service sharing its cores with other processes gets that CPU back."""
    options = ort.SessionOptions()
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads or len(os.sched_getaffinity(0))
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return options


def open_session(
    model_path: Path, providers: list[str] | None = None, threads: int = 0, spinning: bool = True
) -> ort.InferenceSession:
    """Open an inference session and log which provider is active."""
    session = ort.InferenceSession(
        str(model_path),
        sess_options=session_options(threads, spinning),
        providers=default_providers(providers),
    )
    logger.info("Loaded %s on %s", model_path.name, session.get_providers()[0])
    return session
