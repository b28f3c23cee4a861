"""Stores an :class:`~slipway.onnx.bundle.OnnxBundle` directory in the artifact store."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, ClassVar

from zenml.enums import ArtifactType, VisualizationType
from zenml.materializers.base_materializer import BaseMaterializer
from zenml.metadata.metadata_types import MetadataType
from zenml.utils import io_utils

from slipway.onnx.build import directory_size
from slipway.onnx.bundle import MANIFEST, OnnxBundle
from slipway.onnx.parity import parity_report_html

_FILES = "bundle"


class OnnxBundleMaterializer(BaseMaterializer):
    """Copies the bundle directory in and out; shows its parity report on the dashboard."""

    ASSOCIATED_TYPES: ClassVar[tuple[type[Any], ...]] = (OnnxBundle,)
    ASSOCIATED_ARTIFACT_TYPE: ClassVar[ArtifactType] = ArtifactType.MODEL

    def save(self, data: OnnxBundle) -> None:
        """Copy the bundle directory into the artifact store."""
        io_utils.copy_dir(str(data.root), os.path.join(self.uri, _FILES), overwrite=True)

    def load(self, data_type: type[Any]) -> OnnxBundle:
        """Copy the bundle to a local directory (removed after the step) and open it."""
        with self.get_temporary_directory(delete_at_exit=False) as local:
            io_utils.copy_dir(os.path.join(self.uri, _FILES), local, overwrite=True)
            return OnnxBundle.load(Path(local))

    def extract_metadata(self, data: OnnxBundle) -> dict[str, MetadataType]:
        """Roles, size and the headline parity figures."""
        meta: dict[str, MetadataType] = {
            "roles": ",".join(data.roles),
            "size_mb": round(directory_size(data.root) / 2**20, 2),
        }
        for role, part in data.manifest.get("parity", {}).items():
            if isinstance(part, dict):
                meta[f"{role}_parity_passed"] = bool(part.get("passed"))
        return meta

    def compute_content_hash(self, data: OnnxBundle) -> str | None:
        """Hash of every file, so unchanged bundles keep downstream caches."""
        digest = hashlib.sha256()
        for path in sorted(p for p in data.root.rglob("*") if p.is_file()):
            digest.update(str(path.relative_to(data.root)).encode())
            with path.open("rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
        return digest.hexdigest()

    def save_visualizations(self, data: OnnxBundle) -> dict[str, VisualizationType]:
        """The parity report as HTML and the manifest as JSON."""
        out: dict[str, VisualizationType] = {}
        if "parity" in data.manifest:
            path = os.path.join(self.uri, "parity.html")
            with self.artifact_store.open(path, "w") as handle:
                handle.write(parity_report_html(data.manifest["parity"]))
            out[path] = VisualizationType.HTML
        path = os.path.join(self.uri, MANIFEST)
        with self.artifact_store.open(path, "w") as handle:
            handle.write(json.dumps(data.manifest, indent=2, default=str))
        out[path] = VisualizationType.JSON
        return out
