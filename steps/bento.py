"""Step: package the service for the registered version as a bento."""

from __future__ import annotations

from typing import Annotated

from zenml import step

from slipway.bentos import build_service_bento


@step(enable_cache=False)
def build_bento(registered_model: dict[str, str]) -> Annotated[str, "bento_tag"]:
    """Build ``slipway:<version>`` whose service loads exactly this registered version."""
    return build_service_bento(
        model_name=registered_model["name"],
        model_version=registered_model["version"],
        tracking_uri=registered_model["tracking_uri"],
    )
