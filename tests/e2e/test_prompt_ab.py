"""Tier 3: the prompt A/B experiment against the real service (`slipway serve` on the e2e
bundle, its OpenAI-compatible chat route, a real API key): two spam prompts on a few Enron
e-mails, as a library call and as the ZenML pipeline with its shipped config. The tiny random
generator's free text is rarely a label; with ``json_label`` the server's constrained decoding
makes every answer one. Its context is 256 tokens of a 320-word vocabulary (about a character
a token), too short for the shipped prompts/spam_*.yaml: the prompts here are short ones."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from slipway.experiments import classify as ab
from slipway.prompts import resolve
from tests.e2e.conftest import ROOT, Server

pytestmark = pytest.mark.slow

SHIPPED = ["prompts/spam_a.yaml", "prompts/spam_b.yaml"]
MAX_CHARS = 60
SHORT = {
    "e2e-spam-a": "Spam or ham?\n{{email}}",
    "e2e-spam-b": "{{email}}\nLabel (spam or ham):",
}


@pytest.fixture(scope="module")
def prompt_files(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """Two short prompt sources, as `slipway prompts` reads them."""
    folder = tmp_path_factory.mktemp("prompts")
    paths = []
    for name, template in SHORT.items():
        path = folder / f"{name}.yaml"
        path.write_text(yaml.safe_dump({"name": name, "template": template, "tags": {}}))
        paths.append(str(path))
    return paths


def experiment_in(uri: str, name: str, folder: Path) -> str:
    """MLflow experiment ``name``, made with its artifacts in ``folder`` when missing (by
    default they would go to ./mlruns of the clone)."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(name)
    return found.experiment_id if found else client.create_experiment(name, folder.as_uri())


def endpoint(server: Server, **kw: object) -> ab.Endpoint:
    settings: dict[str, object] = {
        "base_url": f"{server.base}/v1",
        "model": "slipway-e2e",
        "api_key": server.keys["generate"],
        "concurrency": 4,
        "requests_per_minute": 1200,
        "max_tokens": 4,
        **kw,
    }
    return ab.Endpoint(**settings)  # type: ignore[arg-type]


def test_comparison_against_the_served_generator_is_tracked(
    server: Server, prompt_files: list[str], tmp_path: Path
) -> None:
    import mlflow
    from mlflow import MlflowClient

    data = ab.load_labelled_csv(size=8, seed=0, max_chars=MAX_CHARS)
    assert data.counts() == {"ham": 4, "spam": 4}
    prompts = [resolve(p) for p in prompt_files]
    free = ab.compare_prompts(prompts, data, endpoint(server), positive="spam", resamples=500)
    assert [s.error_rate for s in free.scores] == [0.0, 0.0]
    for preds in free.predictions:
        assert all(p.output is not None and p.error is None for p in preds)
        assert [p.label for p in preds] == [ab.parse_label(p.output, data.labels) for p in preds]
    # greedy decoding: the same answers again
    again = ab.compare_prompts(prompts, data, endpoint(server), positive="spam", resamples=500)
    assert again.predictions == free.predictions

    constrained = ab.compare_prompts(
        prompts, data, endpoint(server, json_label=True, max_tokens=24), resamples=500
    )
    assert [s.invalid_rate for s in constrained.scores] == [0.0, 0.0]
    assert {p.label for preds in constrained.predictions for p in preds} <= {"spam", "ham"}
    for s in constrained.scores:
        assert s.accuracy_ci[0] <= s.accuracy <= s.accuracy_ci[1]
    test = constrained.tests[0]
    assert test.both_right + test.only_baseline + test.only_challenger + test.both_wrong == 8
    assert 0.0 < test.p_value <= 1.0 and constrained.winner in ("a", "b")
    assert set(constrained.headline()) == {"ab_acc_a", "ab_acc_b", "ab_mcnemar_p"}

    mlflow.set_tracking_uri(server.tracking_uri)
    mlflow.set_experiment(experiment_id=experiment_in(server.tracking_uri, "ab_e2e", tmp_path))
    with mlflow.start_run():
        run_id = ab.log_comparison(constrained, prompts, data, endpoint(server), refs=prompt_files)
    client = MlflowClient(tracking_uri=server.tracking_uri)
    run = client.get_run(run_id)
    assert run.data.tags["decision"] == constrained.decision
    assert run.data.metrics["ab_mcnemar_p"] == pytest.approx(test.p_value)
    files = {f.path for f in client.list_artifacts(run_id, "prompt_ab")}
    assert {"prompt_ab/predictions.json", "prompt_ab/comparison.png"} <= files


def test_prompt_ab_pipeline_with_the_shipped_config(
    server: Server, prompt_files: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow
    from zenml.client import Client

    from pipelines.prompt_ab import prompt_ab

    config = yaml.safe_load((ROOT / "configs" / "prompt_ab.yaml").read_text())
    params = config["parameters"]
    assert params["prompts"] == SHIPPED and all((ROOT / p).is_file() for p in SHIPPED)
    params["prompts"] = prompt_files
    params["sample"].update(size=6, max_chars=MAX_CHARS)
    params["endpoint"].update(
        base_url=f"{server.base}/v1", model="slipway-e2e", json_label=True, max_tokens=24
    )
    params["evaluation"]["resamples"] = 500
    monkeypatch.setenv(params["endpoint"]["api_key_env"], server.keys["generate"])
    path = tmp_path / "prompt_ab.yaml"
    path.write_text(yaml.safe_dump(config))
    uri = Client().active_stack.experiment_tracker.get_tracking_uri()
    experiment = config["settings"]["experiment_tracker.mlflow"]["experiment_name"]
    experiment_in(uri, experiment, tmp_path)

    run = Client().get_pipeline_run(prompt_ab.with_options(config_path=str(path))().id)
    assert run.status == "completed"
    comparison = run.steps["compare_prompt_versions"].outputs["prompt_comparison"][0].load()
    assert comparison.n == 6 and [s.invalid_rate for s in comparison.scores] == [0.0, 0.0]
    assert [s.name for s in comparison.scores] == list(SHORT)
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=[experiment])
    parent = runs[runs["tags.decision"] == comparison.decision]
    assert len(parent) == 1
    assert parent["metrics.ab_acc_b"].iloc[0] == comparison.headline()["ab_acc_b"]
