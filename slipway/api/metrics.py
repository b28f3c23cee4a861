"""Prometheus metrics of the API, on the service's ``/metrics`` next to BentoML's own.

Created through ``bentoml.metrics`` (prometheus_client under BentoML's multiprocess set-up, so
every worker's samples reach one ``/metrics``), lazily on first use. The gauges of readiness
and of the served index are created apart, by the API workers only: a gauge starts at 0 in
every process that creates it, and the encoder's and generator's processes would otherwise
report "not ready" for ever."""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime
from functools import cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from slipway.retrieval.index import IndexDir

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
GC_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


@cache
def _metrics() -> dict[str, Any]:
    import bentoml

    m = bentoml.metrics
    made = {
        "requests": m.Counter(
            name="slipway_requests_total",
            documentation="HTTP requests by route, method and status.",
            labelnames=["route", "method", "status"],
        ),
        "latency": m.Histogram(
            name="slipway_request_duration_seconds",
            documentation="Request latency by route (to the last byte).",
            labelnames=["route", "method"],
            buckets=LATENCY_BUCKETS,
        ),
        "tokens": m.Counter(
            name="slipway_tokens_total",
            documentation="Tokens in (prompts, texts) and out (generated) by route.",
            labelnames=["route", "direction"],
        ),
        "batch": m.Histogram(
            name="slipway_embed_batch_size",
            documentation="Texts per encoder call after adaptive batching.",
            buckets=BATCH_BUCKETS,
        ),
        "cache": m.Counter(
            name="slipway_cache_requests_total",
            documentation="Result-cache lookups by kind and result.",
            labelnames=["kind", "result"],
        ),
        "limited": m.Counter(
            name="slipway_rate_limited_total",
            documentation="Requests refused with 429 by bucket.",
            labelnames=["bucket"],
        ),
        "auth": m.Counter(
            name="slipway_auth_failures_total",
            documentation="Requests refused with 401 or 403.",
            labelnames=["status"],
        ),
        "overloaded": m.Counter(
            name="slipway_overloaded_total",
            documentation="Requests refused with 503 because the worker was saturated.",
        ),
        "timeouts": m.Counter(
            name="slipway_timeouts_total",
            documentation="Requests or backend calls that outlived their deadline, by stage.",
            labelnames=["stage"],
        ),
        "answers": m.Counter(
            name="slipway_answers_total",
            documentation="Answers by outcome (generated, or an abstention, no_context, when no "
            "retrieved passage was relevant enough) and the answer prompt's version.",
            labelnames=["outcome", "prompt_version"],
        ),
        "feedback": m.Counter(
            name="slipway_feedback_total",
            documentation="Feedback on answers by rating and the answer prompt's version.",
            labelnames=["rating", "prompt_version"],
        ),
        "usage_tokens": m.Counter(
            name="slipway_usage_tokens_total",
            documentation="Tokens of routed calls by key account and model (the first "
            f"{MAX_KEY_LABELS} accounts a worker sees, then 'other'; configured models only) "
            "and direction (in, out).",
            labelnames=["key", "model", "direction"],
        ),
        "usage_cost": m.Counter(
            name="slipway_usage_cost_total",
            documentation="Cost of routed calls (the models' price unit) by key account and model.",
            labelnames=["key", "model"],
        ),
        "gc_pause": m.Histogram(
            name="slipway_gc_pause_seconds",
            documentation="Pauses of Python's garbage collector (every thread of the worker "
            "waits) by generation.",
            labelnames=["generation"],
            buckets=GC_BUCKETS,
        ),
        "index_refused": m.Counter(
            name="slipway_index_refused_total",
            documentation="Published index versions a worker refused because another embedder "
            "than the one it serves built them (it keeps serving its own pair).",
            labelnames=["index"],
        ),
    }
    for stage in sorted(STAGES):  # every stage exported from the start, at 0: rate() works
        made["timeouts"].labels(stage=stage)
    return made


@cache
def _gauges() -> dict[str, Any]:
    import bentoml

    m = bentoml.metrics
    return {
        # livemin over the API workers: 0 while any live worker is not ready
        "ready": m.Gauge(
            name="slipway_ready",
            documentation="1 when the API holds the published "
            "index (min over live API workers), else 0.",
            multiprocess_mode="livemin",
        ),
        # livemin: the oldest version any live worker still serves
        "published": m.Gauge(
            name="slipway_index_published_timestamp_seconds",
            documentation="Unix time the served index version was published.",
            labelnames=["index"],
            multiprocess_mode="livemin",
        ),
        "version": m.Gauge(
            name="slipway_index_version_info",
            documentation="1 for the index version served, 0 for one served before.",
            labelnames=["index", "version"],
            multiprocess_mode="livemax",
        ),
    }


METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})
STAGES = frozenset({"request", "encoder", "generator", "search", "graph"})


def request_done(route: str, method: str, status: int, seconds: float) -> None:
    """Count a finished request and its latency. Labels come from fixed sets only: ``route``
    is a route template (or ``unmatched``), an unknown method is ``OTHER``."""
    metrics = _metrics()
    method = method if method in METHODS else "OTHER"
    status = status if 100 <= status <= 599 else 500
    metrics["requests"].labels(route=route, method=method, status=str(status)).inc()
    metrics["latency"].labels(route=route, method=method).observe(seconds)
    if status in (401, 403):
        metrics["auth"].labels(status=str(status)).inc()


# Paths of the server itself (BentoML's probes and metrics, the API's docs), kept as they are.
SERVER_PATHS = frozenset(
    {
        "/livez",
        "/readyz",
        "/healthz",
        "/metrics",
        "/docs",
        "/docs.json",
        "/openapi.json",
        "/docs/oauth2-redirect",
    }
)
OTHER_PATH = "other"


def path_label(path: str, templates: Sequence[tuple[re.Pattern[str], str]]) -> str:
    """The label for a request path: a server path as is, else the template of the first
    route whose pattern matches it, else ``other`` (never the raw path: one label value per
    random path would grow the metrics without bound)."""
    if path in SERVER_PATHS:
        return path
    for pattern, template in templates:
        if pattern.match(path):
            return template
    return OTHER_PATH


def tokens(route: str, prompt: int, completion: int = 0) -> None:
    """Count tokens read and written by a route."""
    metrics = _metrics()
    if prompt:
        metrics["tokens"].labels(route=route, direction="in").inc(prompt)
    if completion:
        metrics["tokens"].labels(route=route, direction="out").inc(completion)


ANSWER_OUTCOMES = ("generated", "no_context")


def answered(outcome: str, prompt_version: str) -> None:
    """Count one answer by outcome (one of :data:`ANSWER_OUTCOMES`) and prompt version (one of
    the few the bundle serves)."""
    _metrics()["answers"].labels(outcome=outcome, prompt_version=prompt_version).inc()


def feedback(rating: str, prompt_version: str) -> None:
    """Count one feedback on an answer (``rating`` positive or negative)."""
    _metrics()["feedback"].labels(rating=rating, prompt_version=prompt_version).inc()


def gc_pause(generation: int, seconds: float) -> None:
    """One garbage collection (generation 0, 1 or 2) and how long it held the worker."""
    _metrics()["gc_pause"].labels(generation=str(min(generation, 2))).observe(seconds)


def batch_size(size: int) -> None:
    """Record one encoder call's batch size."""
    _metrics()["batch"].observe(size)


def cache_event(kind: str, hit: bool) -> None:
    """Count a cache hit or miss."""
    _metrics()["cache"].labels(kind=kind, result="hit" if hit else "miss").inc()


def rate_limited(bucket: str) -> None:
    """Count a 429."""
    _metrics()["limited"].labels(bucket=bucket).inc()


def overloaded() -> None:
    """Count a 503 for saturation."""
    _metrics()["overloaded"].inc()


def timed_out(stage: str) -> None:
    """Count a deadline that passed (``stage``: one of :data:`STAGES`)."""
    _metrics()["timeouts"].labels(stage=stage if stage in STAGES else "request").inc()


def readiness(ready: bool) -> None:
    """Record whether this API worker is ready."""
    _gauges()["ready"].set(1 if ready else 0)


def published_at(directory: IndexDir, version: str) -> float:
    """Unix time ``version`` was published: the pointer's time when it is the published one,
    else when its manifest was written."""
    from slipway.retrieval.index import MANIFEST

    pointer = directory.pointer()
    if pointer is not None and pointer.version == version:
        return datetime.fromisoformat(pointer.updated).timestamp()
    return (directory.version_dir(version) / MANIFEST).stat().st_mtime


def index_served(directory: IndexDir, version: str, previous: str | None = None) -> None:
    """Record the index version now served (and that ``previous`` no longer is)."""
    gauges = _gauges()
    gauges["published"].labels(index=directory.name).set(published_at(directory, version))
    if previous is not None and previous != version:
        gauges["version"].labels(index=directory.name, version=previous).set(0)
    gauges["version"].labels(index=directory.name, version=version).set(1)


def index_refused(index: str) -> None:
    """Count a published version refused for its embedder (see ``Resources._paired``)."""
    _metrics()["index_refused"].labels(index=index).inc()


# --- usage by key and model: bounded label sets --------------------------------------------

MAX_KEY_LABELS = 200
_key_labels: set[str] = set()
_model_labels: frozenset[str] = frozenset()


def usage_models(ids: Sequence[str]) -> None:
    """The model ids usage may be labelled with (the configured ones); others are 'other'."""
    global _model_labels
    _model_labels = frozenset(ids)


def _key_label(account: str) -> str:
    if account in _key_labels:
        return account
    if len(_key_labels) >= MAX_KEY_LABELS:
        return OTHER_PATH
    _key_labels.add(account)
    return account


def usage(account: str, model: str, tokens_in: int, tokens_out: int, cost: float) -> None:
    """Count a routed call's tokens and cost by key account and model (bounded labels)."""
    metrics = _metrics()
    key = _key_label(account)
    model = model if model in _model_labels else OTHER_PATH
    if tokens_in:
        metrics["usage_tokens"].labels(key=key, model=model, direction="in").inc(tokens_in)
    if tokens_out:
        metrics["usage_tokens"].labels(key=key, model=model, direction="out").inc(tokens_out)
    # a free model's calls still show in the cost panel, at zero
    metrics["usage_cost"].labels(key=key, model=model).inc(max(cost, 0.0))
