"""ZenML materializers for Slipway's artifact types."""

from materializers.documents import TextSetMaterializer
from materializers.onnx_bundle import OnnxBundleMaterializer

__all__ = ["OnnxBundleMaterializer", "TextSetMaterializer"]
