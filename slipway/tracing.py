"""Request tracing to MLflow: a share of requests is sampled; inside a sampled request
:meth:`Tracer.span` records an MLflow span, elsewhere it is a no-op."""

from __future__ import annotations

import logging
import random
import threading
from collections import OrderedDict
from contextlib import AbstractContextManager, nullcontext
from contextvars import ContextVar
from typing import Any

logger = logging.getLogger(__name__)
RECENT_TRACES = 10_000  # request ids of traces this worker wrote, remembered for feedback
TRACED: ContextVar[bool] = ContextVar("traced", default=False)  # this request is sampled
SPAN_TYPES = {
    "retrieve": "RETRIEVER",
    "rerank": "RERANKER",
    "prompt": "PARSER",
    "generate": "LLM",
    "answer": "CHAIN",
}


class Tracer:
    """Samples requests at ``rate`` into the MLflow ``experiment`` at ``tracking_uri``;
    ``always`` (feedback is on) traces every request that asks for it."""

    def __init__(
        self, rate: float, tracking_uri: str | None, experiment: str, always: bool = False
    ) -> None:
        self.rate = rate
        self.always = always and bool(tracking_uri)
        if (rate > 0 or always) and not tracking_uri:
            logger.warning(
                "%s but no MLflow tracking URI: tracing is off (set SLIPWAY_MLFLOW_TRACKING_URI).",
                f"SLIPWAY_TRACE_SAMPLE_RATE={rate}" if rate > 0 else "SLIPWAY_FEEDBACK=true",
            )
            self.rate = 0.0
        self.experiment_id: str | None = None
        self._recent: OrderedDict[str, None] = OrderedDict()
        self._recent_lock = threading.Lock()
        if self.rate > 0 or self.always:
            import mlflow

            mlflow.set_tracking_uri(str(tracking_uri))
            self.experiment_id = mlflow.set_experiment(experiment).experiment_id

    @property
    def enabled(self) -> bool:
        """Whether any request can be traced."""
        return self.rate > 0 or self.always

    def sample(self, always: bool = False) -> bool:
        """Whether to trace this request (and mark it so: :meth:`span` then records):
        ``always`` with feedback on, else a ``rate`` share."""
        sampled = (always and self.always) or (self.rate > 0 and random.random() < self.rate)
        TRACED.set(sampled)
        return sampled

    def traced(self, request_id: str) -> None:
        """Remember that this worker wrote the trace of ``request_id`` (the newest
        RECENT_TRACES are kept): feedback on it flushes this worker's export queue first."""
        with self._recent_lock:
            self._recent[request_id] = None
            self._recent.move_to_end(request_id)
            while len(self._recent) > RECENT_TRACES:
                self._recent.popitem(last=False)

    def wrote(self, request_id: str) -> bool:
        """Whether this worker wrote the trace of ``request_id`` recently."""
        with self._recent_lock:
            return request_id in self._recent

    def span(self, name: str, **attributes: Any) -> AbstractContextManager[Any]:
        """An MLflow span inside a sampled request, else nothing (``None``)."""
        if not TRACED.get():
            return nullcontext(None)
        import mlflow

        cm = mlflow.start_span(name=name, span_type=SPAN_TYPES.get(name, "UNKNOWN"))
        return _SpanWithAttributes(cm, attributes)


class _SpanWithAttributes(AbstractContextManager[Any]):
    def __init__(self, cm: Any, attributes: dict[str, Any]) -> None:
        self.cm = cm
        self.attributes = attributes

    def __enter__(self) -> Any:
        span = self.cm.__enter__()
        if self.attributes:
            span.set_attributes(self.attributes)
        return span

    def __exit__(self, *exc: object) -> Any:
        return self.cm.__exit__(*exc)
