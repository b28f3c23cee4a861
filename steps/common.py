"""What every Slipway step shares: a cache policy that follows the ``slipway`` core's code."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import NamedTuple

import mlflow
from zenml import get_step_context
from zenml.config import CachePolicy

from slipway.config import IndexSettings, ServeSettings
from slipway.onnx.bundle import OnnxBundle
from slipway.secrets import PINECONE, with_secret
from slipway.serving import resolve_bundle


def in_pipeline() -> bool:
    """Whether this code runs inside a ZenML step (not called directly, e.g. by a test)."""
    try:
        get_step_context()
    except RuntimeError:
        return False
    return True


def slipway_source_hash() -> str:
    """A hash of every module of the ``slipway`` package: editing the core invalidates caches."""
    import slipway

    root = Path(slipway.__file__).parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


SLIPWAY_CACHE = CachePolicy(cache_func="steps.common.slipway_source_hash")


def zenml_secret(name: str) -> dict[str, str]:
    """The values of a ZenML secret (``KeyError`` when there is none of that name)."""
    from zenml.client import Client

    return {key: str(value) for key, value in Client().get_secret(name).secret_values.items()}


def index_settings() -> IndexSettings:
    """The index settings, with Pinecone's credentials from the ZenML secret named in
    ``SLIPWAY_PINECONE_SECRET`` when set (keys: api_key, index, host)."""
    settings = IndexSettings()
    return with_secret(settings, settings.pinecone_secret, PINECONE, zenml_secret)


class EmbedderSource(NamedTuple):
    """An ONNX embedder directory, a label saying which it is, and its registered model and
    version when it came from the registry (empty for a local bundle)."""

    dir: Path
    label: str
    model_name: str = ""
    model_version: str = ""


def champion_embedder(
    model_name: str, model_version: str | None, bundle_dir: str | None
) -> EmbedderSource:
    """The ONNX embedder of a local bundle, a registered version (or alias), or the champion."""
    if bundle_dir:
        return EmbedderSource(
            OnnxBundle.load(Path(bundle_dir)).role_dir("embedder"), f"bundle {bundle_dir}"
        )
    served = resolve_bundle(
        ServeSettings(model_version=model_version, bundle_dir=None),
        uri=mlflow.get_tracking_uri(),
        name=model_name,
    )
    return EmbedderSource(
        served.bundle.role_dir("embedder"),
        f"{model_name} v{served.version}",
        model_name,
        served.version,
    )


def champion_embedder_dir(
    model_name: str, model_version: str | None, bundle_dir: str | None
) -> tuple[Path, str]:
    """:func:`champion_embedder`'s directory and label."""
    source = champion_embedder(model_name, model_version, bundle_dir)
    return source.dir, source.label
