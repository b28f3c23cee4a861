"""The quickstart notebook, executed with nbclient as a reader runs it: the main job (on the
tiny models), the service, the API calls and both plots."""

from __future__ import annotations

import contextlib
from pathlib import Path

import nbformat
from nbclient import NotebookClient

from tests.e2e.conftest import XQUAD, free_port

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK = ROOT / "notebooks" / "quickstart.ipynb"


def stop_listener(port: int) -> None:
    """SIGTERM the process group of whatever listens on ``port`` on localhost."""
    import os
    import signal

    import psutil

    for conn in psutil.net_connections("tcp"):
        if (
            conn.laddr
            and conn.laddr.port == port
            and conn.status == psutil.CONN_LISTEN
            and conn.pid
        ):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(os.getpgid(conn.pid), signal.SIGTERM)


def test_quickstart_notebook_runs_end_to_end(
    zenml_stack: str,
    graph_server: object,
    tiny_embedder: Path,
    tiny_generator: Path,
    shared_data: Path,
    tmp_path: Path,
) -> None:
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    parameters = next(c for c in notebook.cells if "parameters" in c.metadata.get("tags", []))
    overrides = {
        "parameters": {
            "model_name": "slipway-notebook",
            "corpus": str(XQUAD),
            "chunk_tokens": 48,
            "overlap_tokens": 8,
            "embedder_path": str(tiny_embedder),
            "generator_path": str(tiny_generator),
            "index": {"index_name": "notebook", "eval_dir": str(XQUAD)},
        }
    }
    port = free_port()
    parameters.source = (
        f"CONFIG = 'zenml.yaml'\nOVERRIDES = {overrides!r}\n"
        f"PORT = {port}\nN_REQUESTS = 20\nMAX_NEW_TOKENS = 16\n"
    )
    try:
        NotebookClient(
            notebook,
            timeout=900,
            kernel_name="python3",
            resources={"metadata": {"path": str(ROOT / "notebooks")}},
        ).execute()
    finally:
        nbformat.write(notebook, tmp_path / "quickstart.executed.ipynb")  # to read when it fails
        stop_listener(port)  # the notebook's server, when a cell failed before its last one

    def text(cell: nbformat.NotebookNode) -> str:
        return "".join(o.get("text", "") for o in cell.get("outputs", []))

    code = [c for c in notebook.cells if c.cell_type == "code"]
    outputs = "\n".join(text(c) for c in code)
    assert (
        "registered slipway-notebook version" in outputs and "published index 'notebook'" in outputs
    )
    assert "serving slipway-notebook" in outputs
    assert outputs.count("Q: ") == 1 and "A: " in outputs and "cited: [" in outputs
    assert "stopped" in outputs
    images = [
        c for c in code if any("image/png" in o.get("data", {}) for o in c.get("outputs", []))
    ]
    assert len(images) == 2, "expected the latency and the retrieval-quality plots"
    assert "'hybrid':" in outputs  # the quality figures printed under their plot
