"""Prompt A/B experiments on a labelled classification set.

Two or more prompt versions classify the same seeded, stratified sample through any
OpenAI-compatible chat endpoint (``slipway serve``'s ``/v1/chat/completions`` or another), with
bounded concurrency, a client-side rate limit and retries. Each prompt gets accuracy, F1 and its
invalid-output rate with bootstrap 95% confidence intervals; every challenger is compared with
the first prompt (the baseline) on the same examples with McNemar's exact test, and a decision
rule picks the prompt to keep. :func:`log_comparison` puts all of it in MLflow.

No ZenML or BentoML here: ``steps/experiments.py`` and ``slipway/experiments/cli.py`` wrap it.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import re
import string
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from openai import AsyncOpenAI

    from slipway.prompts import Prompt

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DATASET = ROOT.parent / "shared" / "data" / "enron_spam" / "enron_spam_data.csv.gz"
ENRON_TEXT_COLUMNS = ("Subject", "Message")
ENRON_LABEL_COLUMN = "Spam/Ham"
ENRON_ID_COLUMN = "Message ID"
RETRYABLE_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})
_PREFIX = re.compile(r"^\s*(?:label|answer|classification|category)\s*[:=\-]\s*", re.IGNORECASE)
_WORD = re.compile(r"\w+(?:-\w+)*")


class ExperimentError(RuntimeError):
    """A comparison that cannot go on (a bad dataset, key, model or endpoint); the message says
    what to change."""


# --- the labelled set -------------------------------------------------------------------------


class Example(BaseModel):
    """One labelled text: ``text`` is what fills the prompt's variable (already truncated)."""

    id: str
    text: str
    label: str


class LabelledSet(BaseModel):
    """A seeded, stratified sample of a labelled CSV."""

    source: str
    labels: list[str]
    seed: int
    balanced: bool
    max_chars: int
    examples: list[Example]

    def counts(self) -> dict[str, int]:
        """Examples per label."""
        return {label: sum(e.label == label for e in self.examples) for label in self.labels}


def load_labelled_csv(
    path: Path | str | None = None,
    size: int = 60,
    seed: int = 0,
    *,
    text_columns: Sequence[str] = ENRON_TEXT_COLUMNS,
    label_column: str = ENRON_LABEL_COLUMN,
    id_column: str | None = ENRON_ID_COLUMN,
    balanced: bool = True,
    max_chars: int = 1000,
) -> LabelledSet:
    """A seeded sample of ``size`` rows of a CSV (``.gz`` too) with a label column, stratified by
    label: the same number of each label when ``balanced`` (the remainder to the first labels in
    sorted order), else in the set's own proportions. ``text_columns`` are joined as
    ``Column: value`` lines (one column: its value alone) and cut to ``max_chars`` characters.
    Default: the Enron spam set in ``../shared/data`` (Subject and Message, label Spam/Ham)."""
    import pandas as pd  # type: ignore[import-untyped,unused-ignore]

    source = Path(path) if path is not None else DEFAULT_DATASET
    if not source.is_file():
        raise ExperimentError(
            f"Dataset {source} not found: pass --dataset (a CSV with a label column and text "
            f"columns; the default is the Enron spam set, {DEFAULT_DATASET})."
        )
    if size < 2 or max_chars < 1:
        raise ExperimentError(f"--size must be at least 2 (got {size}), --max-chars at least 1.")
    frame = pd.read_csv(source, dtype=str, keep_default_na=False)
    wanted = [*text_columns, label_column, *([id_column] if id_column else [])]
    missing = [c for c in wanted if c not in frame.columns]
    if missing:
        raise ExperimentError(
            f"{source} has no column {', '.join(map(repr, missing))}; its columns: "
            f"{', '.join(frame.columns)} (set --text-column, --label-column, --id-column)."
        )

    def text_of(row: Any) -> str:
        if len(text_columns) == 1:
            text = str(row[text_columns[0]])
        else:
            text = "\n".join(f"{c}: {row[c]}" for c in text_columns if str(row[c]).strip())
        return text.strip()[:max_chars].rstrip()

    frame = frame.assign(
        _label=frame[label_column].str.strip().str.lower(),
        _text=frame.apply(text_of, axis=1) if len(frame) else "",
    )
    frame = frame[(frame["_label"] != "") & (frame["_text"] != "")]  # nothing to classify
    labels = sorted(frame["_label"].unique())
    if len(labels) < 2:
        raise ExperimentError(f"{source}: column {label_column!r} has fewer than two labels.")
    if size < len(labels):
        raise ExperimentError(f"--size {size} is smaller than the {len(labels)} labels.")
    if balanced:
        per_label = {
            label: size // len(labels) + (i < size % len(labels)) for i, label in enumerate(labels)
        }
        available = frame["_label"].value_counts()
        short = {
            label: int(available[label]) for label, n in per_label.items() if available[label] < n
        }
        if short:
            raise ExperimentError(
                f"--size {size} needs {max(per_label.values())} examples of each label; "
                f"{source} has only {short}: choose a smaller --size or --proportional."
            )
        parts = [
            frame[frame["_label"] == label].sample(n=n, random_state=seed)
            for label, n in per_label.items()
        ]
        sample = pd.concat(parts).sample(frac=1.0, random_state=seed)
    elif size >= len(frame):
        sample = frame.sample(frac=1.0, random_state=seed)
    else:
        from sklearn.model_selection import train_test_split

        try:
            sample, _ = train_test_split(
                frame, train_size=size, stratify=frame["_label"], random_state=seed
            )
        except ValueError as exc:  # a label too rare to stratify, a size too small
            raise ExperimentError(
                f"Cannot draw a proportional sample of {size} from {source}: {exc} Use "
                "--balanced or another --size."
            ) from exc

    examples = [
        Example(
            id=str(row[id_column]) if id_column else str(index),
            text=str(row["_text"]),
            label=str(row["_label"]),
        )
        for index, row in sample.iterrows()
    ]
    return LabelledSet(
        source=str(source),
        labels=labels,
        seed=seed,
        balanced=balanced,
        max_chars=max_chars,
        examples=examples,
    )


# --- asking the endpoint ----------------------------------------------------------------------


@dataclass(frozen=True)
class Endpoint:
    """An OpenAI-compatible chat endpoint and how to call it. ``requests_per_minute`` 0: no
    client-side limit. ``json_label``: ask for ``{"label": ...}`` through ``response_format``
    (a JSON schema with the labels as an enum), for servers that constrain decoding."""

    base_url: str
    model: str
    api_key: str = field(repr=False)
    concurrency: int = 4
    requests_per_minute: float = 0.0
    max_tokens: int = 8
    temperature: float = 0.0
    seed: int = 0
    timeout_s: float = 120.0
    attempts: int = 6
    max_wait_s: float = 60.0
    json_label: bool = False

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ExperimentError(f"--concurrency must be at least 1 (got {self.concurrency}).")
        if self.requests_per_minute < 0:
            raise ExperimentError(
                f"--rpm must be 0 (no limit) or more ({self.requests_per_minute})."
            )
        if self.attempts < 1 or self.max_tokens < 1:
            raise ExperimentError("attempts and --max-tokens must be at least 1.")


class Prediction(BaseModel):
    """What the endpoint answered for one example: its text, the label parsed from it (None:
    invalid output), or the error of a refused request."""

    output: str | None = None
    label: str | None = None
    error: str | None = None


class RateLimiter:
    """A token bucket for asyncio: at most ``per_minute`` acquisitions a minute, at most
    ``burst`` back to back. ``clock`` and ``sleep``: ``time.monotonic`` and ``asyncio.sleep``."""

    def __init__(
        self,
        per_minute: float,
        burst: int = 1,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if per_minute <= 0 or burst < 1:
            raise ValueError("per_minute must be positive and burst at least 1")
        self.rate = per_minute / 60.0
        self.burst = float(burst)
        self._clock, self._sleep = clock, sleep
        self._tokens = self.burst
        self._last = clock()
        self._lock = asyncio.Lock()

    async def acquire(self) -> None:
        """Wait for a token (callers are served in arrival order)."""
        async with self._lock:
            while True:
                now = self._clock()
                self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
                self._last = now
                if self._tokens >= 1.0:
                    self._tokens -= 1.0
                    return
                await self._sleep((1.0 - self._tokens) / self.rate)


def api_key_from(
    env: str | None, secret: str | None, fetch: Callable[[str], Mapping[str, str]]
) -> str:
    """The endpoint's API key: key ``api_key`` of the secret named ``secret`` (``fetch``
    returns a secret's values, e.g. a ZenML secret's), else the environment variable ``env``."""
    if secret:
        try:
            value = fetch(secret).get("api_key")
        except KeyError as exc:
            raise ExperimentError(
                f"Secret {secret!r} does not exist: `zenml secret create {secret} --api_key=...`"
            ) from exc
        if not value:
            raise ExperimentError(f"Secret {secret!r} has no key api_key.")
        return value
    value = os.environ.get(env or "")
    if not value:
        raise ExperimentError(
            f"No API key: set the environment variable {env or '(none named)'} (--api-key-env "
            "names it; `slipway keys create` makes a key for `slipway serve`), or name a ZenML "
            "secret with key api_key (--api-key-secret)."
        )
    return value


def retry_after_seconds(exc: BaseException | None) -> float | None:
    """The wait an HTTP error's ``Retry-After`` (or ``retry-after-ms``) header asks for, in
    seconds (an HTTP date too); None when it has none."""
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    if headers is None:
        return None
    if (ms := headers.get("retry-after-ms")) is not None:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def is_transient(exc: BaseException) -> bool:
    """Whether a request error is worth retrying: no connection, a timeout, 408/409/429/5xx."""
    import openai

    if isinstance(exc, openai.APIConnectionError):  # timeouts too
        return True
    return isinstance(exc, openai.APIStatusError) and exc.status_code in RETRYABLE_STATUS


def parse_label(output: str | None, labels: Sequence[str]) -> str | None:
    """The label an answer gives: its first word (case, quotes, markdown and punctuation
    aside, after an optional ``Label:``/``Answer:``), or the ``label`` of a JSON object; None
    when that is not one of ``labels``."""
    if not output:
        return None
    text = output.strip()
    if text.startswith("{"):
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = None
        if isinstance(value, dict):
            label = str(value.get("label", "")).strip().lower()
            return label if label in labels else None
    text = _PREFIX.sub("", text.lstrip(string.punctuation + " \n\t"))
    match = _WORD.search(text.lower())
    if match is None:
        return None
    word = match.group(0)
    return word if word in labels else None


def _label_format(labels: Sequence[str]) -> dict[str, Any]:
    schema = {
        "type": "object",
        "properties": {"label": {"type": "string", "enum": list(labels)}},
        "required": ["label"],
        "additionalProperties": False,
    }
    return {"type": "json_schema", "json_schema": {"name": "label", "schema": schema}}


def _describe(exc: BaseException) -> str:
    import openai

    if isinstance(exc, openai.APIStatusError):
        body = exc.body
        message = body.get("message") if isinstance(body, dict) else None
        return f"HTTP {exc.status_code}: {message or exc.message}"
    return f"{type(exc).__name__}: {exc}"


def _fatal(exc: BaseException, endpoint: Endpoint) -> ExperimentError | None:
    """The error that ends the whole comparison, or None for one to record per example."""
    import openai

    where = f"{endpoint.base_url} (model {endpoint.model!r})"
    if isinstance(exc, openai.AuthenticationError):
        return ExperimentError(
            f"{where} refused the API key ({_describe(exc)}): set --api-key-env to a variable "
            "holding a valid key (for `slipway serve`: `slipway keys create`)."
        )
    if isinstance(exc, openai.PermissionDeniedError):
        return ExperimentError(
            f"{where}: the API key may not generate ({_describe(exc)}); use a key with the "
            "generate scope."
        )
    if isinstance(exc, openai.NotFoundError):
        return ExperimentError(
            f"{where} answered 404 ({_describe(exc)}): check --model (`slipway models` lists "
            "the served name) and --base-url (it ends in /v1)."
        )
    if is_transient(exc):
        return ExperimentError(
            f"{where} still failing after {endpoint.attempts} attempts ({_describe(exc)}): is "
            "the server up (`slipway serve`)? Retry later, or lower --concurrency / --rpm."
        )
    if isinstance(exc, openai.APIStatusError):
        return None  # a 4xx for this example (too long, refused content): recorded
    return ExperimentError(f"{where}: {_describe(exc)}")


class Classifier:
    """Sends classification prompts to an endpoint: one request at a time per slot of
    ``endpoint.concurrency``, through the rate limiter, retried on transient errors."""

    def __init__(self, endpoint: Endpoint, labels: Sequence[str]) -> None:
        from openai import AsyncOpenAI

        self.endpoint = endpoint
        self.labels = list(labels)
        # the SDK's own retries off: tenacity retries, each attempt through the rate limiter
        self.client: AsyncOpenAI = AsyncOpenAI(
            base_url=endpoint.base_url,
            api_key=endpoint.api_key,
            max_retries=0,
            timeout=endpoint.timeout_s,
        )
        self.limiter = (
            RateLimiter(endpoint.requests_per_minute) if endpoint.requests_per_minute else None
        )
        self.slots = asyncio.Semaphore(endpoint.concurrency)
        self.requests = 0  # attempts sent, retries included

    async def close(self) -> None:
        await self.client.close()

    async def _once(self, text: str) -> str:
        if self.limiter is not None:
            await self.limiter.acquire()
        self.requests += 1
        extra: dict[str, Any] = {}
        if self.endpoint.json_label:
            extra["response_format"] = _label_format(self.labels)
        reply = await self.client.chat.completions.create(
            model=self.endpoint.model,
            messages=[{"role": "user", "content": text}],
            temperature=self.endpoint.temperature,
            max_tokens=self.endpoint.max_tokens,
            seed=self.endpoint.seed,
            **extra,
        )
        return (reply.choices[0].message.content or "") if reply.choices else ""

    async def ask(self, text: str) -> Prediction:
        """The endpoint's answer to ``text``: a per-example refusal (4xx) is recorded in the
        prediction; a bad key or model, or an endpoint still failing after the retries,
        raises :class:`ExperimentError`."""
        from tenacity import (
            AsyncRetrying,
            RetryCallState,
            retry_if_exception,
            stop_after_attempt,
            wait_exponential_jitter,
        )

        backoff = wait_exponential_jitter(initial=0.5, max=self.endpoint.max_wait_s)

        def wait(state: RetryCallState) -> float:
            exc = state.outcome.exception() if state.outcome else None
            after = retry_after_seconds(exc)
            if after is None:
                return float(backoff(state))
            return min(after, self.endpoint.max_wait_s)

        retrying = AsyncRetrying(
            retry=retry_if_exception(is_transient),
            stop=stop_after_attempt(self.endpoint.attempts),
            wait=wait,
            reraise=True,
        )
        async with self.slots:
            try:
                output: str = await retrying(self._once, text)
            except Exception as exc:
                fatal = _fatal(exc, self.endpoint)
                if fatal is not None:
                    raise fatal from exc
                return Prediction(error=_describe(exc))
        return Prediction(output=output, label=parse_label(output, self.labels))


async def classify(
    prompts: Sequence[Prompt],
    data: LabelledSet,
    endpoint: Endpoint,
    variable: str = "email",
    progress: Callable[[], None] | None = None,
) -> list[list[Prediction]]:
    """Every prompt on every example, concurrently: predictions[prompt][example]. ``progress``
    is called after each answer. A prompt every request of which was refused is an error."""
    texts = []
    for prompt in prompts:
        try:
            texts.append([prompt.format(**{variable: e.text}) for e in data.examples])
        except ValueError as exc:
            raise ExperimentError(
                f"Prompt {prompt.name!r} ({prompt.version}): {exc}. The examples fill "
                f"{{{{{variable}}}}}: write that into the template, or set --variable."
            ) from exc
    classifier = Classifier(endpoint, data.labels)
    results: list[list[Prediction]] = [[Prediction() for _ in data.examples] for _ in prompts]

    async def one(i: int, j: int) -> None:
        results[i][j] = await classifier.ask(texts[i][j])
        if progress is not None:
            progress()

    try:
        async with asyncio.TaskGroup() as group:
            for i, j in itertools.product(range(len(prompts)), range(len(data.examples))):
                group.create_task(one(i, j))
    except* ExperimentError as failed:
        raise failed.exceptions[0] from None
    finally:
        await classifier.close()
    for prompt, predictions in zip(prompts, results, strict=True):
        if all(p.error for p in predictions):
            first = (predictions[0].error or "").rstrip(". ")
            raise ExperimentError(
                f"{endpoint.base_url} refused every request of prompt {prompt.name!r} (the "
                f"first: {first}); shorten the prompt or --max-chars, or check --max-tokens "
                "against the server's limits."
            )
    return results


# --- scores, the paired test, the decision ----------------------------------------------------


class PromptScore(BaseModel):
    """One prompt's scores on the sample, with bootstrap confidence intervals (low, high)."""

    key: str  # "a", "b", ...: the prompt's position on the command line
    name: str
    version: str
    n: int
    accuracy: float
    accuracy_ci: tuple[float, float]
    f1: float
    f1_ci: tuple[float, float]
    invalid_rate: float
    invalid_rate_ci: tuple[float, float]
    error_rate: float  # requests the endpoint refused (counted as invalid too)


class PairTest(BaseModel):
    """McNemar's exact test of a challenger against the baseline on the same examples."""

    baseline: str
    challenger: str
    both_right: int
    only_baseline: int  # baseline right, challenger wrong
    only_challenger: int
    both_wrong: int
    p_value: float
    p_adjusted: float  # Bonferroni over the challengers


class Comparison(BaseModel):
    """Everything one comparison found; ``predictions[k][j]`` is prompt k on example j."""

    dataset: str
    labels: list[str]
    positive: str | None
    alpha: float
    confidence: float
    seed: int
    n: int
    scores: list[PromptScore]
    tests: list[PairTest]
    winner: str
    decision: str
    predictions: list[list[Prediction]]

    def score(self, key: str) -> PromptScore:
        return next(s for s in self.scores if s.key == key)

    def headline(self) -> dict[str, float]:
        """The benchmark's figures: accuracy of A and B, and McNemar's exact p of B vs A."""
        return {
            "ab_acc_a": self.scores[0].accuracy,
            "ab_acc_b": self.scores[1].accuracy,
            "ab_mcnemar_p": self.tests[0].p_value,
        }

    def metrics(self) -> dict[str, float]:
        """Flat metrics for MLflow: per prompt ``<key>_<metric>`` (and CI bounds), per test
        ``mcnemar_p_<challenger>``, and the headline figures."""
        out: dict[str, float] = {"n": float(self.n)}
        for s in self.scores:
            for metric in ("accuracy", "f1", "invalid_rate"):
                out[f"{s.key}_{metric}"] = getattr(s, metric)
                low, high = getattr(s, f"{metric}_ci")
                out[f"{s.key}_{metric}_ci_low"], out[f"{s.key}_{metric}_ci_high"] = low, high
            out[f"{s.key}_error_rate"] = s.error_rate
        for t in self.tests:
            out[f"mcnemar_p_{t.challenger}"] = t.p_value
            out[f"mcnemar_p_adj_{t.challenger}"] = t.p_adjusted
        return out | self.headline()


def _f1_statistic(classes: Sequence[int]) -> Callable[..., Any]:
    """Vectorised F1 over integer codes (-1: invalid), macro over ``classes``; 0 where a class
    has no true or predicted member (sklearn's ``zero_division=0``)."""

    def f1(truth: Any, pred: Any, axis: int = -1) -> Any:
        per_class = []
        for c in classes:
            tp = np.sum((truth == c) & (pred == c), axis=axis)
            fp = np.sum((truth != c) & (pred == c), axis=axis)
            fn = np.sum((truth == c) & (pred != c), axis=axis)
            denom = 2 * tp + fp + fn
            per_class.append(np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0))
        return np.mean(per_class, axis=0)

    return f1


def bootstrap_ci(
    data: Sequence[Any],
    statistic: Callable[..., Any],
    seed: int,
    confidence: float = 0.95,
    resamples: int = 2000,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic`` over paired resamples of ``data`` (each
    an array of one value per example), seeded."""
    from scipy.stats import bootstrap

    result = bootstrap(
        tuple(np.asarray(d) for d in data),
        statistic,
        paired=True,
        vectorized=True,
        n_resamples=resamples,
        confidence_level=confidence,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def score_predictions(
    truth: Sequence[str],
    predicted: Sequence[str | None],
    labels: Sequence[str],
    positive: str | None = None,
    errors: int = 0,
    seed: int = 0,
    confidence: float = 0.95,
    resamples: int = 2000,
    key: str = "a",
    name: str = "",
    version: str = "",
) -> PromptScore:
    """Accuracy, F1 (of ``positive``; macro over ``labels`` when None) and invalid-output
    rate of ``predicted`` (None: invalid, which counts as wrong), with bootstrap CIs."""
    from sklearn.metrics import accuracy_score, f1_score

    if len(truth) != len(predicted) or len(truth) < 2:
        raise ValueError("need the same number (at least 2) of true and predicted labels")
    if positive is not None and positive not in labels:
        raise ExperimentError(
            f"--positive {positive!r} is not one of the labels {list(labels)}: pass one of "
            "them, or --positive '' for F1 averaged over the labels."
        )
    classes = [positive] if positive is not None else list(labels)
    code = {label: i for i, label in enumerate(labels)}
    t = np.array([code[x] for x in truth])
    p = np.array([code.get(x, -1) if x is not None else -1 for x in predicted])
    shown = [x if x is not None else "<invalid>" for x in predicted]
    accuracy = float(accuracy_score(list(truth), shown))
    f1 = float(f1_score(list(truth), shown, labels=classes, average="macro", zero_division=0))
    invalid = (p < 0).astype(float)

    def mean(x: Any, axis: int = -1) -> Any:
        return np.mean(x, axis=axis)

    ci: dict[str, Any] = {"seed": seed, "confidence": confidence, "resamples": resamples}
    return PromptScore(
        key=key,
        name=name,
        version=version,
        n=len(truth),
        accuracy=accuracy,
        accuracy_ci=bootstrap_ci([(t == p).astype(float)], mean, **ci),
        f1=f1,
        f1_ci=bootstrap_ci([t, p], _f1_statistic([code[c] for c in classes]), **ci),
        invalid_rate=float(invalid.mean()),
        invalid_rate_ci=bootstrap_ci([invalid], mean, **ci),
        error_rate=errors / len(truth),
    )


def mcnemar_exact(
    baseline_right: Sequence[bool],
    challenger_right: Sequence[bool],
    baseline: str = "a",
    challenger: str = "b",
    comparisons: int = 1,
) -> PairTest:
    """McNemar's exact test: the discordant pairs against Binomial(b + c, 1/2), two-sided
    (scipy's ``binomtest``; 1.0 when no pair is discordant). ``comparisons``: the Bonferroni
    factor for ``p_adjusted``."""
    from scipy.stats import binomtest

    a = np.asarray(baseline_right, dtype=bool)
    b = np.asarray(challenger_right, dtype=bool)
    if a.shape != b.shape:
        raise ValueError("both prompts must be scored on the same examples")
    only_a, only_b = int(np.sum(a & ~b)), int(np.sum(~a & b))
    discordant = only_a + only_b
    p = float(binomtest(min(only_a, only_b), discordant, 0.5).pvalue) if discordant else 1.0
    return PairTest(
        baseline=baseline,
        challenger=challenger,
        both_right=int(np.sum(a & b)),
        only_baseline=only_a,
        only_challenger=only_b,
        both_wrong=int(np.sum(~a & ~b)),
        p_value=p,
        p_adjusted=min(1.0, p * comparisons),
    )


def decide(
    scores: Sequence[PromptScore], tests: Sequence[PairTest], alpha: float = 0.05
) -> tuple[str, str]:
    """The prompt to keep and why. A challenger wins when it is more accurate than the
    baseline (the first prompt) and McNemar's p (Bonferroni-adjusted) is below ``alpha``;
    of several such, the most accurate. Otherwise the baseline stays."""
    by_key = {s.key: s for s in scores}
    base = scores[0]

    def label(s: PromptScore) -> str:
        return f"{s.key.upper()} ({s.name} {s.version})".replace(" )", ")")

    def versus(t: PairTest) -> str:
        c = by_key[t.challenger]
        p = f"McNemar exact p={t.p_value:.4g}"
        if len(tests) > 1:
            p += f", Bonferroni-adjusted {t.p_adjusted:.4g}"
        return f"accuracy {c.accuracy:.3f} vs {base.accuracy:.3f}, {p}"

    better = [
        t for t in tests if t.p_adjusted < alpha and by_key[t.challenger].accuracy > base.accuracy
    ]
    if better:
        best = max(better, key=lambda t: by_key[t.challenger].accuracy)
        winner = by_key[best.challenger]
        return winner.key, (
            f"adopt {label(winner)}: better than {label(base)}, {versus(best)} < {alpha}"
        )
    worse = [t for t in tests if t.p_adjusted < alpha]
    if worse:
        return base.key, (
            f"keep {label(base)}: significantly better than "
            + "; ".join(f"{t.challenger.upper()} ({versus(t)})" for t in worse)
        )
    shown = "; ".join(f"{t.challenger.upper()}: {versus(t)}" for t in tests)
    return base.key, f"no significant difference at alpha={alpha} ({shown}); keep {label(base)}"


def keys(count: int) -> list[str]:
    """Prompt keys by position: a, b, c, ..."""
    if not 2 <= count <= 26:
        raise ExperimentError(f"compare 2 to 26 prompts (got {count}).")
    return list(string.ascii_lowercase[:count])


def evaluate(
    prompts: Sequence[Prompt],
    data: LabelledSet,
    predictions: Sequence[Sequence[Prediction]],
    positive: str | None = None,
    alpha: float = 0.05,
    confidence: float = 0.95,
    resamples: int = 2000,
) -> Comparison:
    """Scores, paired tests against the first prompt, and the decision."""
    ids = keys(len(prompts))
    truth = [e.label for e in data.examples]
    scores = [
        score_predictions(
            truth,
            [p.label for p in preds],
            data.labels,
            positive,
            errors=sum(p.error is not None for p in preds),
            seed=data.seed,
            confidence=confidence,
            resamples=resamples,
            key=key,
            name=prompt.name,
            version=prompt.version,
        )
        for key, prompt, preds in zip(ids, prompts, predictions, strict=True)
    ]
    right = [[p.label == t for p, t in zip(preds, truth, strict=True)] for preds in predictions]
    tests = [
        mcnemar_exact(right[0], right[k], ids[0], ids[k], comparisons=len(prompts) - 1)
        for k in range(1, len(prompts))
    ]
    winner, decision = decide(scores, tests, alpha)
    return Comparison(
        dataset=data.source,
        labels=data.labels,
        positive=positive,
        alpha=alpha,
        confidence=confidence,
        seed=data.seed,
        n=len(truth),
        scores=scores,
        tests=tests,
        winner=winner,
        decision=decision,
        predictions=[list(p) for p in predictions],
    )


def compare_prompts(
    prompts: Sequence[Prompt],
    data: LabelledSet,
    endpoint: Endpoint,
    *,
    positive: str | None = None,
    alpha: float = 0.05,
    variable: str = "email",
    resamples: int = 2000,
    show_progress: bool = True,
) -> Comparison:
    """Run every prompt on ``data`` through ``endpoint`` and compare them (a progress bar on
    stderr unless ``show_progress`` is false)."""
    from rich.console import Console
    from rich.progress import Progress

    keys(len(prompts))
    total = len(prompts) * len(data.examples)
    with Progress(console=Console(stderr=True), disable=not show_progress) as bar:
        task = bar.add_task(f"{len(prompts)} prompts x {len(data.examples)} examples", total=total)
        predictions = asyncio.run(
            classify(prompts, data, endpoint, variable, lambda: bar.advance(task))
        )
    return evaluate(prompts, data, predictions, positive, alpha, resamples=resamples)


# --- report: table, plot, MLflow --------------------------------------------------------------


def predictions_table(
    comparison: Comparison, data: LabelledSet, text_chars: int = 300
) -> dict[str, list[Any]]:
    """One row per example: id, label, the text (cut to ``text_chars``), and per prompt its
    output, parsed label, correctness and error."""
    table: dict[str, list[Any]] = {
        "id": [e.id for e in data.examples],
        "label": [e.label for e in data.examples],
        "text": [e.text[:text_chars] for e in data.examples],
    }
    for s, preds in zip(comparison.scores, comparison.predictions, strict=True):
        table[f"{s.key}_output"] = [p.output for p in preds]
        table[f"{s.key}_label"] = [p.label for p in preds]
        table[f"{s.key}_correct"] = [
            p.label == e.label for p, e in zip(preds, data.examples, strict=True)
        ]
        table[f"{s.key}_error"] = [p.error for p in preds]
    return table


def plot_comparison(comparison: Comparison) -> Figure:
    """Accuracy, F1 and invalid-output rate per prompt, with the bootstrap CIs as error bars."""
    from matplotlib.figure import Figure

    metrics = ("accuracy", "f1", "invalid_rate")
    fig = Figure(figsize=(2.2 + 1.6 * len(comparison.scores), 4.0), layout="constrained")
    ax = fig.add_subplot()
    width = 0.8 / len(metrics)
    x = np.arange(len(comparison.scores))
    for m, metric in enumerate(metrics):
        values = np.array([getattr(s, metric) for s in comparison.scores])
        ci = np.array([getattr(s, f"{metric}_ci") for s in comparison.scores])
        err = np.clip(np.vstack([values - ci[:, 0], ci[:, 1] - values]), 0.0, None)
        offset = (m - (len(metrics) - 1) / 2) * width
        name = {"f1": "F1"}.get(metric, metric.replace("_", " "))
        ax.bar(x + offset, values, width, yerr=err, capsize=3, label=name)
    ax.set_xticks(x, [f"{s.key.upper()}\n{s.name}" for s in comparison.scores])
    ax.set_ylim(0, 1.2)
    ax.set_yticks(np.linspace(0, 1, 6))
    ax.set_ylabel(f"score ({comparison.confidence:.0%} bootstrap CI)")
    winner = comparison.score(comparison.winner)
    ax.set_title(f"n={comparison.n}; keep {winner.key.upper()} ({winner.name})", fontsize=10)
    ax.legend(loc="upper center", ncols=len(metrics), fontsize=8, frameon=False)
    return fig


def log_comparison(
    comparison: Comparison,
    prompts: Sequence[Prompt],
    data: LabelledSet,
    endpoint: Endpoint,
    refs: Sequence[str] | None = None,
) -> str:
    """Log into the active MLflow run (start one first): parameters, metrics, the
    per-example table, the plot, the comparison as JSON, the decision as tags; and one nested
    run per prompt with its template and scores. Returns the parent run's id."""
    import mlflow

    run = mlflow.active_run()
    if run is None:
        raise RuntimeError("log_comparison needs an active MLflow run")
    params: dict[str, Any] = {
        "dataset": data.source,
        "size": len(data.examples),
        "seed": data.seed,
        "balanced": data.balanced,
        "max_chars": data.max_chars,
        "labels": ",".join(data.labels),
        "positive": comparison.positive or "macro",
        "alpha": comparison.alpha,
        "base_url": endpoint.base_url,
        "model": endpoint.model,
        "concurrency": endpoint.concurrency,
        "rpm": endpoint.requests_per_minute,
        "max_tokens": endpoint.max_tokens,
        "temperature": endpoint.temperature,
        "json_label": endpoint.json_label,
    }
    for key, prompt, ref in zip(
        keys(len(prompts)), prompts, refs or [""] * len(prompts), strict=True
    ):
        params[f"prompt_{key}"] = f"{prompt.name} {prompt.version}".strip()
        if ref:
            params[f"prompt_{key}_ref"] = ref
    mlflow.log_params(params)
    mlflow.log_metrics(comparison.metrics())
    mlflow.set_tags({"decision": comparison.decision, "winner": comparison.winner})
    mlflow.log_table(predictions_table(comparison, data), "prompt_ab/predictions.json")
    mlflow.log_dict(
        comparison.model_dump(mode="json", exclude={"predictions"}), "prompt_ab/comparison.json"
    )
    mlflow.log_figure(plot_comparison(comparison), "prompt_ab/comparison.png")
    for score, prompt in zip(comparison.scores, prompts, strict=True):
        with mlflow.start_run(run_name=f"{score.key}: {prompt.name}", nested=True):
            mlflow.log_params(
                {"key": score.key, "prompt": prompt.name, "prompt_version": prompt.version}
            )
            mlflow.log_text(prompt.template, "prompt_template.txt")
            prefix = f"{score.key}_"
            mlflow.log_metrics(
                {
                    metric.removeprefix(prefix): value
                    for metric, value in comparison.metrics().items()
                    if metric.startswith(prefix)
                }
                | {"n": float(score.n)}
            )
            mlflow.set_tag("winner", str(score.key == comparison.winner).lower())
    return str(run.info.run_id)
