"""What the service needs from the outside world: the bundle to serve, found and cached."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from slipway.config import ModelSettings, ServeSettings, get_settings
from slipway.onnx.bundle import OnnxBundle

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServedBundle:
    """A bundle on local disk and where it came from."""

    bundle: OnnxBundle
    model_name: str
    version: str


def tracking_uri() -> str:
    """The MLflow tracking URI: ``SLIPWAY_MLFLOW_TRACKING_URI``, ``MLFLOW_TRACKING_URI``."""
    uri = get_settings().mlflow_tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        raise RuntimeError(
            "No MLflow tracking URI: set SLIPWAY_MLFLOW_TRACKING_URI (`slipway serve` sets it "
            "from the active ZenML stack), or serve a local bundle with SLIPWAY_BUNDLE_DIR."
        )
    return uri


def resolve_bundle(
    serve: ServeSettings | None = None, uri: str | None = None, name: str | None = None
) -> ServedBundle:
    """The bundle to serve: a local directory, or a version of registered model ``name``
    (default: ``SLIPWAY_REGISTERED_MODEL_NAME``) downloaded once from the registry at ``uri``
    (default: :func:`tracking_uri`)."""
    from slipway.registry import download_bundle

    serve = serve or ServeSettings()
    name = name or ModelSettings().registered_model_name
    if serve.bundle_dir is not None:
        return ServedBundle(OnnxBundle.load(serve.bundle_dir), name, "local")
    cache = get_settings().cache_dir / "bundles"
    cache.mkdir(parents=True, exist_ok=True)
    if serve.model_version is not None and serve.model_version.isdigit():  # not an alias
        target = cache / f"{name}-v{serve.model_version}"
        if (target / "manifest.json").is_file():
            return ServedBundle(OnnxBundle.load(target), name, serve.model_version)
    tmp = Path(tempfile.mkdtemp(prefix=".download-", dir=cache))
    try:
        version, local = download_bundle(uri or tracking_uri(), name, serve.model_version, tmp)
        target = cache / f"{name}-v{version}"
        if not (target / "manifest.json").is_file():
            shutil.rmtree(target, ignore_errors=True)
            try:
                os.replace(local, target)
            except OSError:  # another worker won the race; its copy is complete
                if not (target / "manifest.json").is_file():
                    raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    logger.info("Serving %s version %s from %s", name, version, target)
    return ServedBundle(OnnxBundle.load(target), name, version)
