"""Step: package the service for the registered version as a bento."""

from __future__ import annotations

from typing import Annotated

import bentoml
from bentoml._internal.bento.bento import Bento
from zenml import step

from slipway.bentos import build_service_bento


@step(enable_cache=False)
def build_bento(
    registered_model: dict[str, str], gpu: bool = False
) -> tuple[Annotated[str, "bento_tag"], Annotated[Bento, "bento"]]:
    """Build ``slipway:<version>`` whose service loads exactly this registered version (its
    image on a CUDA base with onnxruntime-gpu when ``gpu``). The bento is also an artifact in
    the stack's artifact store, for CI/CD to containerize wherever the pipeline ran."""
    tag = build_service_bento(
        model_name=registered_model["name"],
        model_version=registered_model["version"],
        tracking_uri=registered_model["tracking_uri"],
        gpu=gpu,
    )
    return tag, bentoml.get(tag)
