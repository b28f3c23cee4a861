"""Slipway: LLMOps pipelines that build, check, register and serve ONNX models."""

__version__ = "0.1.0"
