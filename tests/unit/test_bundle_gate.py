"""Tier 1: the whole-bundle gate, pure and against a real (file-backed) MLflow registry."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow import MlflowClient

from slipway.registry import (
    CHALLENGER,
    current_champion,
    register_bundle,
    settle,
)
from slipway.registry.gate import ANSWER_METRICS, GateResult, compare, decide, gate_figures

PARITY = {"embedder_min_cosine": 0.999, "generator_token_agreement": 0.95}
RETRIEVAL = {"hybrid_ndcg_at_10": 0.90, "hybrid_recall_at_10": 0.97, "dense_ndcg_at_10": 0.8}
ANSWERS = {"answer_token_f1": 0.30, "answer_containment": 0.40, "citation_recall": 0.95}


def test_compare_allows_the_margin_and_names_the_metric_that_is_worse() -> None:
    ok = compare("answers", {**ANSWERS, "answer_token_f1": 0.29}, ANSWERS, ANSWER_METRICS, 0.02)
    assert ok.passed and ok.baseline["answer_token_f1"] == 0.30
    worse = compare("answers", {**ANSWERS, "citation_recall": 0.90}, ANSWERS, ANSWER_METRICS, 0.02)
    assert not worse.passed
    assert worse.reason.startswith("citation_recall 0.9000 is worse than the champion's 0.9500")
    first = compare("answers", ANSWERS, None, ANSWER_METRICS, 0.02)
    assert first.passed and "no champion figures" in first.reason
    unmeasured = compare("answers", {}, ANSWERS, ANSWER_METRICS, 0.02)
    assert unmeasured.passed and "not measured" in unmeasured.reason


def test_decide_needs_every_gate_and_reports_each() -> None:
    parity = GateResult("parity", True, "not worse than the current champion")
    champion_tags = {
        "gate.answers.answer_token_f1": "0.5",
        "gate.retrieval.hybrid_ndcg_at_10": "0.9",
    }
    assert gate_figures(champion_tags, "answers") == {"answer_token_f1": 0.5}
    held = decide(parity, RETRIEVAL, ANSWERS, champion_tags, 0.01, 0.02)
    assert not held.promote and held.reason.startswith("held back: answers: answer_token_f1")
    assert held.tags()["gate.answers"] == "fail" and held.tags()["gate.retrieval"] == "pass"
    assert held.tags()["gate.retrieval.hybrid_ndcg_at_10"] == "0.9"
    assert "| answers | **fail** |" in held.report() and "Not promoted." in held.report()
    bad_parity = GateResult("parity", False, "generator_mean_kl worse")
    assert not decide(bad_parity, RETRIEVAL, ANSWERS, None, 0.01, 0.02).promote
    assert decide(parity, RETRIEVAL, ANSWERS, None, 0.01, 0.02).promote


def test_a_challenger_becomes_champion_only_through_the_gate(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)

    def register() -> str:
        out = register_bundle(client, "m", "file:///b", None, PARITY, {}, promote=False)
        assert not out.champion
        assert client.get_model_version_by_alias("m", CHALLENGER).version == int(out.version)
        return out.version

    first = register()
    assert current_champion(client, "m") is None  # registered, not yet promoted
    assert settle(client, "m", first, {}, ANSWERS, 0.01, 0.02).promote
    assert current_champion(client, "m") == first
    # the next build answers worse than the champion by more than the margin: held back
    second = register()
    worse = {**ANSWERS, "answer_containment": 0.30}
    decision = settle(client, "m", second, {}, worse, 0.01, 0.02)
    assert not decision.promote and current_champion(client, "m") == first
    tags = client.get_model_version("m", second).tags
    assert tags["gate.answers"] == "fail" and tags["gate.parity"] == "pass"
    assert tags["promotion"].startswith("held back: answers: answer_containment 0.3000")
    # a third, as good as the champion within the margin, is promoted
    third = register()
    assert settle(client, "m", third, {}, {**ANSWERS, "answer_token_f1": 0.29}, 0.01, 0.02).promote
    assert current_champion(client, "m") == third


@pytest.mark.parametrize("promote", [True, False])
def test_parity_worse_than_the_champion_never_promotes(tmp_path: Path, promote: bool) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    register_bundle(client, "m", "file:///a", None, PARITY, {})
    worse = {**PARITY, "embedder_min_cosine": 0.9}
    out = register_bundle(client, "m", "file:///b", None, worse, {}, promote=promote)
    assert not out.champion and current_champion(client, "m") == "1"
    if not promote:
        decision = settle(client, "m", out.version, {}, ANSWERS, 0.01, 0.02)
        assert not decision.promote and decision.reason.startswith("held back: parity")


def test_gate_figures_skip_the_recorded_reason() -> None:
    tags = {"gate.parity": "pass", "gate.parity.reason": "first version", "gate.parity.x": "1"}
    assert gate_figures(tags, "parity") == {"x": 1.0}
