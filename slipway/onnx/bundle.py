"""The ONNX bundle: the deployable artifact of the model-build flow.

A directory with one sub-directory per role (``embedder/``, ``generator/`` and, when one was
built, ``reranker/``) holding the final graphs and their tokenizers, and ``manifest.json``
recording how it was built, its parity report and its latency figures. The BentoML service
loads exactly this directory.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
ROLES = ("embedder", "generator", "reranker")


class BundleError(RuntimeError):
    """A bundle directory is missing or malformed."""


@dataclass
class OnnxBundle:
    """A directory of ONNX models plus the manifest that describes them."""

    root: Path
    manifest: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def create(cls, root: Path) -> OnnxBundle:
        """An empty bundle at ``root`` (the directory is created, must be empty)."""
        root.mkdir(parents=True, exist_ok=True)
        if any(root.iterdir()):
            raise BundleError(f"{root} is not empty; choose a fresh bundle directory.")
        bundle = cls(root=root, manifest={"format": FORMAT_VERSION, "models": {}})
        bundle.save()
        return bundle

    @classmethod
    def load(cls, root: Path) -> OnnxBundle:
        """Open a bundle written by :meth:`save`."""
        path = Path(root) / MANIFEST
        if not path.is_file():
            raise BundleError(f"{root} is not an ONNX bundle (no {MANIFEST}).")
        manifest = json.loads(path.read_text())
        if manifest.get("format") != FORMAT_VERSION:
            raise BundleError(
                f"{root} has bundle format {manifest.get('format')}, "
                f"this Slipway reads {FORMAT_VERSION}."
            )
        return cls(root=Path(root), manifest=manifest)

    def save(self) -> None:
        """Write the manifest atomically."""
        tmp = self.root / (MANIFEST + ".tmp")
        tmp.write_text(json.dumps(self.manifest, indent=2, sort_keys=True, default=str))
        tmp.replace(self.root / MANIFEST)

    def role_dir(self, role: str) -> Path:
        """Directory of a role's final model."""
        if role not in ROLES:
            raise BundleError(f"Unknown role {role!r}; expected one of {ROLES}.")
        return self.root / role

    def add_model(
        self, role: str, model_dir: Path, info: dict[str, Any], move: bool = False
    ) -> None:
        """Copy (or move) a model directory into the bundle and record how it was built."""
        dst = self.role_dir(role)
        if dst.exists():
            shutil.rmtree(dst)
        if move:
            shutil.move(model_dir, dst)
        else:
            shutil.copytree(model_dir, dst)
        self.manifest["models"][role] = info
        self.save()

    @property
    def roles(self) -> list[str]:
        """Roles present in this bundle."""
        return [r for r in ROLES if r in self.manifest.get("models", {})]

    def has_role(self, role: str) -> bool:
        """Whether this bundle holds a model for ``role`` (the re-ranker is optional)."""
        return role in self.roles and (self.root / role).is_dir()

    def info(self, role: str) -> dict[str, Any]:
        """Build information of one role."""
        try:
            return self.manifest["models"][role]
        except KeyError as exc:
            raise BundleError(f"The bundle at {self.root} has no {role}.") from exc

    def source_path(self, role: str) -> Path:
        """The base model directory a role was built from."""
        return Path(self.info(role)["source"][f"{role}_path"])

    def runtime(self, role: str) -> str:
        """The runtime that loads a role's model (``ort``, ``genai`` or ``optimum``)."""
        return str(self.info(role)["config"]["runtime"])

    def record(self, key: str, value: Any) -> None:
        """Store a report (parity, latency, ...) in the manifest."""
        self.manifest[key] = value
        self.save()

    def copy_to(self, dst: Path) -> OnnxBundle:
        """A copy of this bundle at ``dst``."""
        shutil.copytree(self.root, dst, dirs_exist_ok=True)
        return OnnxBundle.load(dst)
