"""Tier 3: the README's main job in a clone of the repository with nothing beside it (no
``../shared``), as someone who cloned it alone runs it: ``zenml init``, the local stack, then
``zenml pipeline run pipelines.llmops.llmops_pipeline -c <zenml.yaml with the tiny models>``.
The corpus, the evaluation set and the parity gate's calibration texts all come from the
packaged demo set in the clone."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
DEMO = Path("slipway", "documents", "data", "xquad_en", "beir")


def clone_of_the_work_tree(dest: Path) -> Path:
    """The files a clone of this work tree has (tracked and new, none that git ignores)."""
    listed = (
        subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT,
            capture_output=True,
            check=True,
        )
        .stdout.decode()
        .split("\0")
    )
    for rel in filter(None, listed):
        src = ROOT / rel
        if src.is_file():  # deleted in the work tree but not yet in the index: not there
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    return dest


def test_main_job_runs_in_a_clone_without_shared_data(
    tiny_embedder: Path, tiny_generator: Path, tmp_path: Path
) -> None:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs the git work tree to clone from")
    from zenml.client import Client

    from slipway.retrieval.stores import index_dir

    clone = clone_of_the_work_tree(tmp_path / "slipway")
    assert not (clone.parent / "shared").exists() and not (clone / ".zen").exists()
    config = yaml.safe_load((clone / "zenml.yaml").read_text())
    assert "corpus" not in config["parameters"] and "eval_dir" not in config["parameters"]["index"]
    run_name = f"clean-clone-{uuid.uuid4().hex[:8]}"
    config |= {"run_name": run_name, "enable_cache": False, "model": {"name": "slipway-clone"}}
    config["parameters"] |= {
        "model_name": "slipway-clone",
        "bento": False,
        "kg": {"enabled": False},
        "embedder_path": str(tiny_embedder),
        "generator_path": str(tiny_generator),
        "chunk_tokens": 48,
        "overlap_tokens": 8,
    }
    config["parameters"]["index"]["index_name"] = "clone"
    config["parameters"]["build"]["generator"]["quantization"] = "off"  # 25 s less on 2 cores
    config["steps"] = {
        "calibration_sample": {"parameters": {"limit": 32}},
        "parity_gate": {"parameters": {"n_texts": 16, "n_prompts": 4, "max_new_tokens": 8}},
        "measure_latency": {"parameters": {"rounds": 2, "batch": 4, "new_tokens": 4}},
    }
    (clone / "clone-run.yaml").write_text(yaml.safe_dump(config))

    venv_bin = Path(sys.executable).parent
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "PYTHONPATH": str(clone),  # the clone's code, not the editable install's
        "ZENML_REPOSITORY_PATH": str(clone),
        "SLIPWAY_THREADS": "2",
    }
    script = (
        f"'{venv_bin}/zenml' init && '{sys.executable}' -m stacks.register "
        "stacks/local.yaml && "
        f"'{venv_bin}/zenml' pipeline run pipelines.llmops.llmops_pipeline -c clone-run.yaml"
    )
    started = time.monotonic()
    done = subprocess.run(
        ["bash", "-c", script],
        cwd=clone,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-6000:]
    print(f"main job in the clone: {time.monotonic() - started:.0f} s")

    run = Client().get_pipeline_run(run_name)
    assert run.status == "completed"

    def output(step: str, name: str):  # type: ignore[no-untyped-def]
        return run.steps[step].outputs[name][0].load()

    demo = (clone / DEMO).resolve()
    documents = output("preprocess_documents", "documents")
    assert Path(documents.source).resolve() == demo and len(documents.documents) == 240
    # the quality gate judged the index with the clone's packaged judgements
    assert output("evaluation_set", "eval_dir") == str(demo)
    metrics = output("evaluate_index_version", "retrieval_metrics")
    assert {"dense", "sparse", "hybrid", "graph", "hybrid+graph"} <= set(metrics)
    assert 0 < metrics["sparse"]["ndcg@10"] <= 1  # BM25 finds XQuAD's passages (0.96 on MiniLM's)
    assert output("publish_index_version", "published_index_version") == "v000001"
    index = index_dir("clone")
    assert index.published() == "v000001" and index.manifest("v000001").metrics == metrics
    # the version has its graph snapshot and the gate's decision on graph retrieval
    gate = index.manifest("v000001").graph
    assert gate is not None and gate.hybrid_graph == metrics["hybrid+graph"]["ndcg@10"]
    # the parity gate embedded a sample of this corpus's chunks
    calibration = output("calibration_sample", "calibration_set")
    chunk_texts = {c.text for c in output("chunk_corpus", "chunks").chunks}
    assert Path(calibration.source).resolve() == demo and len(calibration.texts) == 32
    assert set(calibration.texts) <= chunk_texts
    parity = output("parity_gate", "gated_bundle").manifest["parity"]
    assert parity["embedder"]["n_texts"] == 16 and parity["embedder"]["passed"]
    assert "shared/data" not in log
