"""Tier 1: the prompt A/B experiment's pieces: label parsing, the seeded stratified sample,
scores with bootstrap CIs, McNemar's exact test, the decision rule, the rate limiter, and the
client's retries and refusals against a scripted OpenAI-compatible HTTP server on loopback
(it answers 429 with Retry-After, 401, 400 on demand, which the real service does not do on
cue; ``tests/e2e/test_prompt_ab.py`` runs the comparison against `slipway serve`)."""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from slipway.experiments import classify as ab
from slipway.prompts import Prompt, resolve

ROOT = Path(__file__).resolve().parents[2]
SPAM_WORDS = ("winner", "viagra", "cheap", "offer")


# --- labels ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("output", "label"),
    [
        ("spam", "spam"),
        ("Spam.", "spam"),
        ("  HAM\n\nThe e-mail is about a meeting.", "ham"),
        ("**Spam**", "spam"),
        ('"ham"', "ham"),
        ("Label: spam", "spam"),
        ("answer - Ham!", "ham"),
        ('{"label": "spam"}', "spam"),
        ('{"label": "maybe"}', None),
        ("This is spam.", None),  # the first word decides
        ("spammy", None),
        ("", None),
        (None, None),
        ("...", None),
    ],
)
def test_labels_come_from_the_first_word(output: str | None, label: str | None) -> None:
    assert ab.parse_label(output, ["ham", "spam"]) == label


# --- the sample -----------------------------------------------------------------------------


def write_csv(path: Path, spam: int, ham: int) -> Path:
    import pandas as pd

    rows = [
        {
            "Message ID": str(i),
            "Subject": f"{SPAM_WORDS[i % 4]} deal {i}" if i < spam else f"meeting {i}",
            "Message": ("buy now " * 50 if i < spam else "see you at the gas desk\n" * 20),
            "Spam/Ham": "spam" if i < spam else " Ham ",
            "Date": "2001-01-01",
        }
        for i in range(spam + ham)
    ]
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_balanced_sample_is_stratified_and_seeded(tmp_path: Path) -> None:
    csv = write_csv(tmp_path / "mail.csv.gz", spam=80, ham=40)
    with gzip.open(csv) as f:
        assert f.read(10)  # written compressed; pandas reads it back the same way
    first = ab.load_labelled_csv(csv, size=31, seed=7, max_chars=40)
    again = ab.load_labelled_csv(csv, size=31, seed=7, max_chars=40)
    other = ab.load_labelled_csv(csv, size=31, seed=8, max_chars=40)
    assert first.labels == ["ham", "spam"]  # stripped, lower-cased
    assert first.counts() == {"ham": 16, "spam": 15}
    assert [e.id for e in first.examples] == [e.id for e in again.examples]
    assert [e.id for e in first.examples] != [e.id for e in other.examples]
    assert len({e.id for e in first.examples}) == 31
    assert all(len(e.text) <= 40 for e in first.examples)
    example = next(e for e in first.examples if e.label == "spam")
    assert example.text.startswith("Subject: ") and "\nMessage: buy now" in example.text
    # not sorted by label: the order is shuffled too
    assert [e.label for e in first.examples] != sorted(e.label for e in first.examples)


def test_proportional_sample_keeps_the_set_proportions(tmp_path: Path) -> None:
    csv = write_csv(tmp_path / "mail.csv", spam=80, ham=40)
    sample = ab.load_labelled_csv(csv, size=30, seed=1, balanced=False)
    assert sample.counts() == {"ham": 10, "spam": 20}
    whole = ab.load_labelled_csv(csv, size=500, seed=1, balanced=False)
    assert whole.counts() == {"ham": 40, "spam": 80}
    single = ab.load_labelled_csv(
        csv, size=4, seed=1, text_columns=["Message"], id_column=None, max_chars=8
    )
    assert all(e.text in ("buy now", "see you") for e in single.examples)
    assert all(e.id.isdigit() for e in single.examples)


def test_sample_errors_say_what_to_change(tmp_path: Path) -> None:
    csv = write_csv(tmp_path / "mail.csv", spam=80, ham=40)
    with pytest.raises(ab.ExperimentError, match="pass --dataset"):
        ab.load_labelled_csv(tmp_path / "missing.csv")
    with pytest.raises(ab.ExperimentError, match=r"no column 'Body'.*--text-column"):
        ab.load_labelled_csv(csv, text_columns=["Body"])
    with pytest.raises(ab.ExperimentError, match="only {'ham': 40}.*--proportional"):
        ab.load_labelled_csv(csv, size=100)
    with pytest.raises(ab.ExperimentError, match="--size must be at least 2"):
        ab.load_labelled_csv(csv, size=1)


def test_enron_sample_of_200_is_balanced_and_reproducible(shared_data: Path) -> None:
    path = shared_data / "enron_spam" / "enron_spam_data.csv.gz"
    assert path == ab.DEFAULT_DATASET
    sample = ab.load_labelled_csv(size=200, seed=0, max_chars=300)
    assert sample.labels == ["ham", "spam"] and sample.counts() == {"ham": 100, "spam": 100}
    assert [e.id for e in ab.load_labelled_csv(size=200, seed=0).examples] == [
        e.id for e in sample.examples
    ]
    assert all(0 < len(e.text) <= 300 for e in sample.examples)
    assert all(e.text.startswith(("Subject: ", "Message: ")) for e in sample.examples)


# --- scores, McNemar, the decision -----------------------------------------------------------


def test_scores_match_sklearn_and_the_cis_hold_them() -> None:
    from sklearn.metrics import accuracy_score, f1_score

    rng = np.random.default_rng(3)
    truth = list(rng.choice(["spam", "ham"], size=60))
    predicted: list[str | None] = [
        None if r < 0.1 else (t if r < 0.75 else ("ham" if t == "spam" else "spam"))
        for t, r in zip(truth, rng.random(60), strict=True)
    ]
    shown = [p or "<invalid>" for p in predicted]
    score = ab.score_predictions(truth, predicted, ["ham", "spam"], "spam", errors=2, seed=0)
    assert score.accuracy == pytest.approx(accuracy_score(truth, shown))
    # for the positive class's F1 an invalid answer is a "not spam"
    as_ham = [p or "ham" for p in predicted]
    assert score.f1 == pytest.approx(f1_score(truth, as_ham, pos_label="spam"))
    assert score.invalid_rate == pytest.approx(sum(p is None for p in predicted) / 60)
    assert score.error_rate == pytest.approx(2 / 60)
    for metric in ("accuracy", "f1", "invalid_rate"):
        low, high = getattr(score, f"{metric}_ci")
        assert low <= getattr(score, metric) <= high and low < high
    macro = ab.score_predictions(truth, predicted, ["ham", "spam"], None, seed=0)
    assert macro.f1 == pytest.approx(
        f1_score(truth, shown, labels=["ham", "spam"], average="macro", zero_division=0)
    )
    # the vectorised statistic the bootstrap resamples is sklearn's F1, class by class
    code = {"ham": 0, "spam": 1}
    t = np.array([code[x] for x in truth])
    p = np.array([code.get(x, -1) if x else -1 for x in predicted])
    assert float(ab._f1_statistic([0, 1])(t, p)) == pytest.approx(macro.f1)
    # same seed, same interval; a constant outcome has a zero-width one
    again = ab.score_predictions(truth, predicted, ["ham", "spam"], "spam", seed=0)
    assert again.accuracy_ci == score.accuracy_ci
    perfect = ab.score_predictions(truth, truth, ["ham", "spam"], "spam")
    assert perfect.accuracy_ci == (1.0, 1.0) and perfect.invalid_rate_ci == (0.0, 0.0)
    with pytest.raises(ab.ExperimentError, match="--positive 'junk'"):
        ab.score_predictions(truth, predicted, ["ham", "spam"], "junk")


def test_mcnemar_exact_on_a_known_table() -> None:
    # 1 pair only A got right, 9 only B: p = 2 * P(X <= 1), X ~ Bin(10, 1/2) = 22/1024
    a = [True] * 30 + [True] + [False] * 9 + [False] * 5
    b = [True] * 30 + [False] + [True] * 9 + [False] * 5
    test = ab.mcnemar_exact(a, b)
    assert (test.both_right, test.only_baseline, test.only_challenger, test.both_wrong) == (
        30,
        1,
        9,
        5,
    )
    assert test.p_value == pytest.approx(22 / 1024, rel=1e-12)
    assert ab.mcnemar_exact(b, a).p_value == pytest.approx(22 / 1024, rel=1e-12)
    assert ab.mcnemar_exact(a, b, comparisons=3).p_adjusted == pytest.approx(66 / 1024)
    assert ab.mcnemar_exact(a, a).p_value == 1.0  # no discordant pair
    balanced = ab.mcnemar_exact([True, False] * 4, [False, True] * 4)
    assert balanced.p_value == pytest.approx(1.0)


def score(key: str, accuracy: float) -> ab.PromptScore:
    return ab.PromptScore(
        key=key,
        name=f"p{key}",
        version="1",
        n=100,
        accuracy=accuracy,
        accuracy_ci=(accuracy - 0.1, accuracy + 0.1),
        f1=accuracy,
        f1_ci=(accuracy - 0.1, accuracy + 0.1),
        invalid_rate=0.0,
        invalid_rate_ci=(0.0, 0.0),
        error_rate=0.0,
    )


def pair(challenger: str, p: float, comparisons: int = 1) -> ab.PairTest:
    return ab.PairTest(
        baseline="a",
        challenger=challenger,
        both_right=50,
        only_baseline=5,
        only_challenger=20,
        both_wrong=25,
        p_value=p,
        p_adjusted=min(1.0, p * comparisons),
    )


def test_decision_rule() -> None:
    winner, text = ab.decide([score("a", 0.70), score("b", 0.85)], [pair("b", 0.001)])
    assert winner == "b" and text.startswith("adopt B (pb 1)") and "p=0.001" in text
    winner, text = ab.decide([score("a", 0.70), score("b", 0.75)], [pair("b", 0.2)])
    assert winner == "a" and text.startswith("no significant difference at alpha=0.05")
    assert text.endswith("keep A (pa 1)")
    winner, text = ab.decide([score("a", 0.90), score("b", 0.60)], [pair("b", 0.001)])
    assert winner == "a" and text.startswith("keep A (pa 1): significantly better than B")
    # three prompts: Bonferroni; C's p=0.03 is 0.06 adjusted, D wins
    three = [score("a", 0.6), score("c", 0.7), score("d", 0.8)]
    winner, text = ab.decide(three, [pair("c", 0.03, 2), pair("d", 0.001, 2)])
    assert winner == "d" and "Bonferroni-adjusted 0.002" in text
    winner, _ = ab.decide(three, [pair("c", 0.03, 2), pair("d", 0.04, 2)])
    assert winner == "a"
    # a stricter alpha keeps the baseline
    assert ab.decide([score("a", 0.7), score("b", 0.85)], [pair("b", 0.02)], alpha=0.01)[0] == "a"


# --- the client: rate limit, Retry-After, retries, refusals ----------------------------------


def test_rate_limiter_spaces_requests_on_a_virtual_clock() -> None:
    now = [0.0]
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    async def run() -> list[float]:
        limiter = ab.RateLimiter(per_minute=120, burst=2, clock=lambda: now[0], sleep=sleep)
        times = []
        for _ in range(6):
            await limiter.acquire()
            times.append(now[0])
        return times

    # two at once (the burst), then one every 0.5 s
    assert asyncio.run(run()) == pytest.approx([0.0, 0.0, 0.5, 1.0, 1.5, 2.0])
    assert sum(slept) == pytest.approx(2.0)
    with pytest.raises(ValueError):
        ab.RateLimiter(per_minute=0)


def test_retry_after_headers_in_seconds_milliseconds_or_a_date() -> None:
    import httpx2
    import openai

    def error(headers: dict[str, str]) -> openai.RateLimitError:
        request = httpx2.Request("POST", "http://x/v1/chat/completions")
        response = httpx2.Response(429, headers=headers, request=request)
        return openai.RateLimitError("slow down", response=response, body=None)

    assert ab.retry_after_seconds(error({"Retry-After": "7"})) == 7.0
    assert ab.retry_after_seconds(error({"retry-after-ms": "250", "Retry-After": "7"})) == 0.25
    later = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    assert 25 < (ab.retry_after_seconds(error({"Retry-After": later})) or 0) <= 30
    assert ab.retry_after_seconds(error({})) is None
    assert ab.retry_after_seconds(error({"Retry-After": "soon"})) is None
    assert ab.retry_after_seconds(ValueError("no response")) is None
    assert ab.is_transient(error({}))


class Scripted(BaseHTTPRequestHandler):
    """An OpenAI-compatible chat endpoint: answers by the server's ``script`` (status, headers,
    body) while it lasts, then like a keyword classifier: prompt B (it ends in "Label:") is
    right; prompt A is right on ham and says "Unsure" on spam."""

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        server: Endpoint = self.server  # type: ignore[assignment]
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with server.lock:
            server.requests.append({"body": body, "auth": self.headers["Authorization"]})
            scripted = server.script.pop(0) if server.script else None
        if scripted is not None:
            status, headers, payload = scripted
        else:
            text = body["messages"][0]["content"].lower()
            spam = any(word in text for word in SPAM_WORDS)
            if "label:" in text:
                answer = "Spam." if spam else "ham"
            else:
                answer = "Unsure, it may be an offer" if spam else "HAM"
            status, headers, payload = 200, {}, completion(answer)
        data = json.dumps(payload).encode()
        try:
            self.send_response(status)
            for key, value in {**headers, "Content-Type": "application/json"}.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except ConnectionError:
            pass  # a request the client cancelled (the comparison ended on a fatal error)


def completion(text: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 0,
        "model": "m",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
        ],
    }


def refusal(status: int, message: str) -> tuple[int, dict[str, str], dict[str, Any]]:
    return status, {}, {"error": {"message": message, "type": "invalid_request_error"}}


class Endpoint(ThreadingHTTPServer):
    script: list[tuple[int, dict[str, str], dict[str, Any]]]
    requests: list[dict[str, Any]]
    lock: threading.Lock

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


@pytest.fixture
def endpoint() -> Iterator[Endpoint]:
    server = Endpoint(("127.0.0.1", 0), Scripted)
    server.script, server.requests, server.lock = [], [], threading.Lock()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def config(server: Endpoint, **kw: Any) -> ab.Endpoint:
    return ab.Endpoint(
        **{"base_url": server.url, "model": "m", "api_key": "k", "max_wait_s": 0.05, **kw}
    )


def tiny_set(n: int = 4) -> ab.LabelledSet:
    examples = [
        ab.Example(id=str(i), text=f"cheap offer {i}" if i % 2 else f"lunch {i}", label=label)
        for i, label in enumerate(["ham", "spam"] * (n // 2))
    ]
    return ab.LabelledSet(
        source="t", labels=["ham", "spam"], seed=0, balanced=True, max_chars=99, examples=examples
    )


PLAIN = Prompt("plain", "1", "Is it spam? {{email}}")
LABELLED = Prompt("labelled", "2", "Spam or ham?\n{{email}}\nLabel:")


def test_429_and_503_are_retried_honouring_retry_after(endpoint: Endpoint) -> None:
    endpoint.script = [
        (429, {"Retry-After": "0"}, {"error": {"message": "slow down"}}),
        (503, {"Retry-After": "0"}, {"error": {"message": "busy"}}),
    ]
    got = asyncio.run(ab.classify([LABELLED], tiny_set(2), config(endpoint, concurrency=1)))
    assert [[p.label for p in row] for row in got] == [["ham", "spam"]]
    assert len(endpoint.requests) == 4  # two refused, then one for each example
    body = endpoint.requests[-1]["body"]
    assert (body["temperature"], body["max_tokens"], body["seed"], body["model"]) == (0, 8, 0, "m")
    assert endpoint.requests[-1]["auth"] == "Bearer k"
    assert "response_format" not in body


def test_json_label_asks_for_the_labels_as_an_enum(endpoint: Endpoint) -> None:
    endpoint.script = [(200, {}, completion('{"label": "spam"}'))]
    got = asyncio.run(
        ab.classify([PLAIN], tiny_set(2), config(endpoint, json_label=True, concurrency=1))
    )
    assert got[0][0].label == "spam"
    schema = endpoint.requests[0]["body"]["response_format"]["json_schema"]["schema"]
    assert schema["properties"]["label"]["enum"] == ["ham", "spam"]


def test_a_bad_key_or_model_ends_the_comparison(endpoint: Endpoint) -> None:
    endpoint.script = [refusal(401, "Invalid API key")] * 8
    with pytest.raises(ab.ExperimentError, match=r"refused the API key.*--api-key-env"):
        asyncio.run(ab.classify([PLAIN], tiny_set(), config(endpoint)))
    endpoint.script = [refusal(404, "model 'x' not found")] * 8
    with pytest.raises(ab.ExperimentError, match=r"answered 404.*--model.*--base-url"):
        asyncio.run(ab.classify([PLAIN], tiny_set(), config(endpoint)))


def test_refusals_are_recorded_per_example_unless_all_are(endpoint: Endpoint) -> None:
    endpoint.script = [refusal(400, "prompt too long")]
    got = asyncio.run(ab.classify([PLAIN], tiny_set(2), config(endpoint, concurrency=1)))
    assert got[0][0].error == "HTTP 400: prompt too long" and got[0][0].label is None
    assert got[0][1].error is None and got[0][1].output
    endpoint.script = [refusal(400, "prompt too long")] * 2
    with pytest.raises(ab.ExperimentError, match="refused every request of prompt 'plain'"):
        asyncio.run(ab.classify([PLAIN, LABELLED], tiny_set(2), config(endpoint, concurrency=1)))
    with pytest.raises(ab.ExperimentError, match=r"needs values for \['text'\].*--variable"):
        asyncio.run(ab.classify([Prompt("t", "1", "{{text}}")], tiny_set(2), config(endpoint)))


def test_an_unreachable_endpoint_fails_after_the_attempts(endpoint: Endpoint) -> None:
    from tests.servers import free_port

    unreachable = ab.Endpoint(
        base_url=f"http://127.0.0.1:{free_port()}/v1",
        model="m",
        api_key="k",
        attempts=2,
        max_wait_s=0.05,
    )
    with pytest.raises(ab.ExperimentError, match=r"still failing after 2 attempts.*slipway serve"):
        asyncio.run(ab.classify([PLAIN], tiny_set(2), unreachable))
    endpoint.script = [(503, {}, {"error": {"message": "busy"}})] * 3
    with pytest.raises(ab.ExperimentError, match=r"after 3 attempts \(HTTP 503: busy\)"):
        asyncio.run(ab.classify([PLAIN], tiny_set(2), config(endpoint, attempts=3, concurrency=1)))


def test_endpoint_settings_are_checked() -> None:
    with pytest.raises(ab.ExperimentError, match="--concurrency"):
        ab.Endpoint(base_url="http://x/v1", model="m", api_key="k", concurrency=0)
    with pytest.raises(ab.ExperimentError, match="--rpm"):
        ab.Endpoint(base_url="http://x/v1", model="m", api_key="k", requests_per_minute=-1)
    assert "api_key" not in repr(ab.Endpoint(base_url="http://x/v1", model="m", api_key="sk-1"))


def test_api_key_from_the_environment_or_a_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    secrets = {"ab": {"api_key": "from-secret"}, "empty": {}}

    def fetch(name: str) -> dict[str, str]:
        return secrets[name]

    monkeypatch.setenv("AB_TEST_KEY", "from-env")
    assert ab.api_key_from("AB_TEST_KEY", None, fetch) == "from-env"
    assert ab.api_key_from("AB_TEST_KEY", "ab", fetch) == "from-secret"
    monkeypatch.delenv("AB_TEST_KEY")
    with pytest.raises(ab.ExperimentError, match="set the environment variable AB_TEST_KEY"):
        ab.api_key_from("AB_TEST_KEY", None, fetch)
    with pytest.raises(ab.ExperimentError, match="zenml secret create nope"):
        ab.api_key_from("AB_TEST_KEY", "nope", fetch)
    with pytest.raises(ab.ExperimentError, match="has no key api_key"):
        ab.api_key_from("AB_TEST_KEY", "empty", fetch)


# --- the whole comparison, tracked; the command ------------------------------------------------


@pytest.fixture
def private_mlflow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """mlflow's process-wide tracking URI and experiment (which these tests set) as they were
    after the test; run in ``tmp_path``, where a new experiment's ./mlruns artifacts go."""
    import mlflow
    from mlflow.tracking import fluent

    monkeypatch.chdir(tmp_path)

    uri, active = mlflow.get_tracking_uri(), fluent._active_experiment_id
    env = os.environ.get("MLFLOW_EXPERIMENT_ID")
    mlflow.end_run()
    yield
    mlflow.set_tracking_uri(uri)
    fluent._active_experiment_id = active
    if env is None:
        os.environ.pop("MLFLOW_EXPERIMENT_ID", None)
    else:
        os.environ["MLFLOW_EXPERIMENT_ID"] = env


def test_compare_decides_plots_and_logs_everything_to_mlflow(
    endpoint: Endpoint, tmp_path: Path, private_mlflow: None
) -> None:
    import mlflow
    from mlflow import MlflowClient

    data = ab.load_labelled_csv(write_csv(tmp_path / "m.csv", 60, 60), size=40, seed=2)
    a, b = (
        resolve(str(ROOT / "prompts" / "spam_a.yaml")),
        resolve(str(ROOT / "prompts/spam_b.yaml")),
    )
    target = config(endpoint, requests_per_minute=6000, concurrency=3)
    comparison = ab.compare_prompts([a, b], data, target, positive="spam", show_progress=False)
    assert len(endpoint.requests) == 80
    sa, sb = comparison.scores
    assert (sa.name, sb.name) == ("slipway-spam-a", "slipway-spam-b")
    assert (sa.accuracy, sa.invalid_rate, sb.accuracy, sb.invalid_rate) == (0.5, 0.5, 1.0, 0.0)
    assert sa.f1 == 0.0 and sb.f1 == 1.0
    test = comparison.tests[0]
    assert (test.only_baseline, test.only_challenger) == (0, 20)
    assert test.p_value == pytest.approx(2 * 0.5**20)
    assert comparison.winner == "b" and comparison.decision.startswith("adopt B (slipway-spam-b")
    assert comparison.headline() == {
        "ab_acc_a": 0.5,
        "ab_acc_b": 1.0,
        "ab_mcnemar_p": pytest.approx(2 * 0.5**20),
    }
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("prompt_ab_unit")
    with mlflow.start_run():
        run_id = ab.log_comparison(comparison, [a, b], data, target, refs=["x.yaml", "y.yaml"])
    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(run_id)
    assert run.data.metrics["ab_acc_b"] == 1.0 and run.data.metrics["b_invalid_rate"] == 0.0
    assert run.data.metrics["a_accuracy_ci_low"] <= 0.5 <= run.data.metrics["a_accuracy_ci_high"]
    assert run.data.params["prompt_b"] == "slipway-spam-b file:spam_b.yaml"
    assert run.data.params["prompt_a_ref"] == "x.yaml" and run.data.params["rpm"] == "6000"
    assert run.data.tags["winner"] == "b" and run.data.tags["decision"] == comparison.decision
    files = {f.path for f in client.list_artifacts(run_id, "prompt_ab")}
    assert files == {
        "prompt_ab/predictions.json",
        "prompt_ab/comparison.json",
        "prompt_ab/comparison.png",
    }
    table = json.loads(
        Path(client.download_artifacts(run_id, "prompt_ab/predictions.json")).read_text()
    )
    assert len(table["data"]) == 40 and "b_correct" in table["columns"]
    children = client.search_runs(
        [run.info.experiment_id], f"tags.mlflow.parentRunId = '{run_id}'", order_by=["run_name"]
    )
    assert [c.data.params["prompt"] for c in children] == ["slipway-spam-a", "slipway-spam-b"]
    assert children[1].data.metrics["accuracy"] == 1.0 and children[1].data.tags["winner"] == "true"
    png = ab.plot_comparison(comparison)
    png.savefig(tmp_path / "plot.png")
    assert (tmp_path / "plot.png").read_bytes()[:4] == b"\x89PNG"


def test_the_compare_command_prints_the_decision_and_tracks_it(
    endpoint: Endpoint, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, private_mlflow: None
) -> None:
    import typer
    from mlflow import MlflowClient
    from typer.testing import CliRunner

    from slipway.experiments.cli import register

    app = typer.Typer()
    register(app)

    @app.command()
    def other() -> None:  # a group of two, as `slipway prompts` is
        pass

    csv = write_csv(tmp_path / "m.csv", 30, 30)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("AB_CLI_KEY", "secret-key")
    args = [
        "compare", str(ROOT / "prompts/spam_a.yaml"), str(ROOT / "prompts/spam_b.yaml"),
        "--dataset", str(csv),
        "--size", "20", "--base-url", endpoint.url, "--model", "m",
        "--api-key-env", "AB_CLI_KEY", "--tracking-uri", uri, "--plot", str(tmp_path / "p.png"),
        "--resamples", "500",
    ]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "Decision: adopt B (slipway-spam-b" in result.output
    assert (tmp_path / "p.png").is_file()
    assert {r["auth"] for r in endpoint.requests} == {"Bearer secret-key"}
    runs = MlflowClient(tracking_uri=uri).search_runs(
        [MlflowClient(tracking_uri=uri).get_experiment_by_name("prompt_ab").experiment_id],
        "tags.winner = 'b' and attributes.run_name LIKE 'prompt-ab-%'",
    )
    assert len(runs) == 1 and runs[0].data.metrics["ab_acc_a"] == 0.5
    missing = CliRunner().invoke(app, [*args[:3], "--dataset", str(tmp_path / "nope.csv")])
    assert missing.exit_code == 1 and "pass --dataset" in missing.output
    one = CliRunner().invoke(app, ["compare", args[1], "--tracking-uri", uri])
    assert one.exit_code == 1 and "compare 2 to 26 prompts" in one.output
