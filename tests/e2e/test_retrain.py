"""The retraining loop end to end on the main job's published index: labelled and feedback
pairs, a fine-tuned embedder and a trained re-ranker (tiny models, a few steps), the candidate
judgement, a challenger built through model_build, a new index version built beside the
published one (blue/green), the whole-bundle gate, and the pair published together."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.e2e.conftest import XQUAD

pytestmark = pytest.mark.slow

MODEL = "slipway-e2e-retrain"  # its own registered model: the session's service is untouched


def test_retrain_builds_gates_and_publishes_the_pair(
    registered: dict[str, str], tiny_embedder: Path, tmp_path: Path
) -> None:
    from zenml import Model
    from zenml.client import Client

    from pipelines.retrain import retrain
    from slipway.embedding import model_fingerprint
    from slipway.onnx.bundle import OnnxBundle
    from slipway.retrieval.hybrid import load_fusion
    from slipway.retrieval.index import paired_version
    from slipway.retrieval.stores import index_dir
    from slipway.serving import resolve_bundle

    index = index_dir("e2e")
    before = index.published()
    old_fingerprint = index.manifest(before).embedder
    feedback = tmp_path / "feedback.jsonl"  # as `slipway feedback export` writes it
    feedback.write_text(
        json.dumps(
            {
                "question": "How many points did the Panthers defense surrender?",
                "rating": "positive",
                "citations": ["Super_Bowl_50#0#0"],
                "expected_chunk_ids": None,
            }
        )
        + "\n"
    )
    train = {"epochs": 1, "batch_size": 8, "max_seq_length": 64, "checkpoint_steps": 5}
    run = retrain.with_options(enable_cache=False, model=Model(name=MODEL))(
        corpus=str(XQUAD),
        model_name=MODEL,
        base_path=str(tiny_embedder),
        data={
            "labelled": str(XQUAD),
            "labelled_split": "test",
            "feedback": str(feedback),
            "frozen": str(tmp_path / "validation.json"),
            "validation_fraction": 0.3,
            "negatives": 2,
            "mining_depth": 10,
        },
        embedder=train,
        reranker={**train, "enabled": True},
        rerank_margin=-1.0,  # ship the re-ranker whatever it adds: its build path is tested
        build={"generator": {"quantization": "int8"}},
        index={"index_name": "e2e", "eval_dir": str(XQUAD)},
        gate={"retrieval_margin": 1.0, "answer_margin": 1.0},  # a first version: promoted
        chunk_tokens=48,
        overlap_tokens=8,
    )
    run = Client().get_pipeline_run(run.id)
    assert run.status == "completed"
    data = run.steps["build_training_set"].outputs["training_set"][0].load()
    assert data.stats["pairs.labelled"] > 100 and data.stats["pairs.feedback"] == 0  # a duplicate
    assert data.stats["duplicates"] >= 1 and data.stats["queries.validation"] > 0
    assert json.loads((tmp_path / "validation.json").read_text())  # frozen for the next run
    report = run.steps["judge_retrievers"].outputs["candidate_report"][0].load()
    assert {"base.hybrid", "tuned.hybrid", "tuned.hybrid_rerank"} <= set(report.metrics)
    assert report.ship_reranker and report.rerank_gain is not None

    gate = run.steps["gate_bundle"].outputs["bundle_gate"][0].load()
    assert gate["champion"] is True, gate
    version = gate["version"]
    served = resolve_bundle(name=MODEL, uri=registered["tracking_uri"])
    assert served.version == version
    bundle: OnnxBundle = served.bundle
    assert (bundle.role_dir("reranker") / "model.onnx").is_file()
    assert load_fusion(bundle.root).rrf_k == report.fusion["rrf_k"]

    # blue/green: a new version built by the new embedder is published with its model; the old
    # embedder still pairs with its own version, and nothing pairs across
    published = run.steps["publish_if_champion"].outputs["published_index_version"][0].load()
    assert published == index.published() and published != before
    new_fingerprint = model_fingerprint(bundle.role_dir("embedder"))
    assert index.manifest(published).embedder == new_fingerprint != old_fingerprint
    assert index.manifest(published).model_name == MODEL
    assert paired_version(index, new_fingerprint) == published
    assert paired_version(index, old_fingerprint) == before
