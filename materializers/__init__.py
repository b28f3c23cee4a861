"""ZenML materializers for Slipway's artifact types."""

from materializers.onnx_bundle import OnnxBundleMaterializer

__all__ = ["OnnxBundleMaterializer"]
