"""The retraining loop end to end on the main job's published index: labelled and feedback
pairs, a fine-tuned embedder and a trained re-ranker (tiny models, a few steps), the candidate
judgement, a challenger built through model_build, a new index version built beside the
published one (blue/green), the whole-bundle gate, and the pair published together; then the
new champion served, its re-ranker on /v1/search and /v1/rerank."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.e2e.conftest import XQUAD, Server, _create_keys, post, serving

pytestmark = pytest.mark.slow

MODEL = "slipway-e2e-retrain"  # its own registered model: the session's service is untouched


def test_retrain_builds_gates_and_publishes_the_pair(
    registered: dict[str, str], tiny_embedder: Path, tmp_path: Path, acl_corpus: Path
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
        corpus=str(acl_corpus),
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

    served_reranker(registered, published)


def served_reranker(registered: dict[str, str], published: str) -> None:
    """The new champion served as a user starts it: its re-ranker orders /v1/search and
    answers /v1/rerank (texts, or chunk ids the caller may read)."""
    home = Path(os.environ["SLIPWAY_HOME"])
    keys = _create_keys(home)
    with serving(
        registered["tracking_uri"],
        home.parent / "serve-retrain.log",
        registered_model_name=MODEL,
        index_name="e2e",
    ) as base:
        server = Server(base, keys, home.parent / "serve-retrain.log", registered["tracking_uri"])
        question = "How many points did the Panthers defense surrender?"
        found = post(server, "/v1/search", {"query": question, "top_k": 5}, role="search")
        assert found.status_code == 200, found.text
        assert found.json()["reranked"] and found.json()["index_version"] == published
        hits = found.json()["results"]
        texts = [h["text"] for h in hits]
        reply = post(
            server,
            "/v1/rerank",
            {"query": question, "documents": texts, "top_n": 3, "return_documents": True},
            role="search",
        )
        assert reply.status_code == 200, reply.text
        results = reply.json()["results"]
        scores = [r["relevance_score"] for r in results]
        assert len(results) == 3 and scores == sorted(scores, reverse=True)
        assert all(texts[r["index"]] == r["document"]["text"] for r in results)
        assert reply.json()["usage"]["prompt_tokens"] > 0
        by_ids = post(
            server,
            "/v1/rerank",
            {"query": question, "ids": [h["id"] for h in hits]},
            role="search",
        ).json()["results"]
        assert [r["id"] for r in by_ids] == [hits[r["index"]]["id"] for r in by_ids]
        # a restricted chunk is as unknown as a missing one to a caller who may not read it
        for chunk in ("Nikola_Tesla#0#0", "no-such-doc#0#0"):
            refused = post(
                server, "/v1/rerank", {"query": question, "ids": [chunk]}, role="outsider"
            )
            assert refused.status_code == 404, refused.text
            assert refused.json()["error"]["code"] == "chunk_not_found"
        allowed = post(
            server,
            "/v1/rerank",
            {"query": question, "ids": ["Nikola_Tesla#0#0"]},
            role="engineer",
        )
        assert allowed.status_code == 200, allowed.text
