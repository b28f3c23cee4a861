"""The ``slipway`` command line: help, and one-line failures with a non-zero exit."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "slipway.cli", *args], capture_output=True,
                          text=True, timeout=120)


def test_help_lists_the_commands() -> None:
    out = run_cli("--help")
    assert out.returncode == 0
    for command in ("serve", "models", "version"):
        assert command in out.stdout


def test_serve_rejects_a_directory_that_is_not_a_bundle(tmp_path: Path) -> None:
    out = run_cli("serve", "--bundle-dir", str(tmp_path))
    assert out.returncode == 1
    assert "not an ONNX bundle" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_serve_without_a_registered_model_says_what_to_do(tmp_path: Path) -> None:
    out = run_cli("serve", "--tracking-uri", f"sqlite:///{tmp_path / 'empty.db'}")
    assert out.returncode == 1
    assert "run the model_build pipeline first" in out.stderr.replace("\n", " ")
