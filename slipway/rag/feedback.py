"""Feedback on answers: stored as MLflow assessments on the answer's trace (a human rating, the
comment as its rationale, the chunks that should have been cited as an expectation), read back
as rows for evaluation and retraining."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from tenacity import retry, retry_if_exception_type, stop_after_attempt, wait_fixed

from slipway.api import metrics
from slipway.api.errors import ApiError
from slipway.api.schemas import FeedbackRequest, FeedbackResponse
from slipway.resources import Resources

RATING = "user_rating"
EXPECTED = "expected_citations"
ANSWER_ROUTE = "/v1/answer"


async def record(request: FeedbackRequest, res: Resources, principal: str) -> FeedbackResponse:
    """Store ``request`` on the trace of the caller's own answer ``request.request_id``."""
    if not res.serve.feedback:
        raise ApiError(
            404, "Feedback is off on this server (SLIPWAY_FEEDBACK=false).", code="feedback_off"
        )
    if not res.tracer.always:
        raise ApiError(
            501,
            "Feedback needs MLflow tracing: start the server with SLIPWAY_MLFLOW_TRACKING_URI "
            "set (`slipway serve` sets it from the active ZenML stack).",
            code="feedback_unavailable",
        )
    local = res.tracer.wrote(request.request_id)
    return await asyncio.to_thread(_record, request, res.tracer.experiment_id, principal, local)


def _record(
    request: FeedbackRequest, experiment_id: str | None, principal: str, local: bool
) -> FeedbackResponse:
    import mlflow
    from mlflow.entities import AssessmentSource, AssessmentSourceType

    trace = _answer_trace(experiment_id, request.request_id, principal, local)
    tags = trace.info.tags
    prompt_version = tags.get("prompt_version", "unknown")
    source = AssessmentSource(source_type=AssessmentSourceType.HUMAN, source_id=principal)
    meta = {"request_id": request.request_id, "prompt_version": prompt_version}
    stored = [
        mlflow.log_feedback(
            trace_id=trace.info.trace_id,
            name=RATING,
            value=request.rating == "positive",
            source=source,
            rationale=request.comment,
            metadata=meta,
        )
    ]
    if request.expected_chunk_ids is not None:
        stored.append(
            mlflow.log_expectation(
                trace_id=trace.info.trace_id,
                name=EXPECTED,
                value=list(request.expected_chunk_ids),
                source=source,
                metadata=meta,
            )
        )
    metrics.feedback(request.rating, prompt_version)
    return FeedbackResponse(
        request_id=request.request_id,
        trace_id=trace.info.trace_id,
        prompt_version=prompt_version,
        assessments=[a.assessment_id for a in stored if a.assessment_id],
    )


class _NotYet(LookupError):
    """No trace yet: it may still be in another worker's asynchronous export queue."""


@retry(
    retry=retry_if_exception_type(_NotYet),
    stop=stop_after_attempt(4),
    wait=wait_fixed(0.5),
    reraise=True,
)
def _find_trace(experiment_id: str | None, request_id: str, principal: str) -> Any:
    import mlflow

    traces = mlflow.search_traces(
        experiment_ids=[experiment_id] if experiment_id else None,
        filter_string=f"tags.request_id = '{request_id}'",  # the schema allows [A-Za-z0-9._-]
        order_by=["timestamp_ms DESC"],
        max_results=20,
        return_type="list",
        include_spans=False,
    )
    mine = [t for t in traces if t.info.tags.get("principal") == principal]
    if not mine:
        raise _NotYet(request_id)
    return mine[0]


def _answer_trace(experiment_id: str | None, request_id: str, principal: str, local: bool) -> Any:
    """The newest answer trace of ``request_id`` that ``principal`` asked for; a 404 otherwise
    (also for someone else's answer: ids are not secrets, answers are). ``local``: this worker
    wrote it, and its export queue is flushed first (a flush takes a second or two); another
    worker's queue exports on its own, so the search is retried for a moment."""
    if local:
        import mlflow

        mlflow.flush_trace_async_logging()
    try:
        return _find_trace(experiment_id, request_id, principal)
    except _NotYet:
        raise ApiError(
            404,
            f"request_id: no answer {request_id!r} of yours is on record; rate the "
            "X-Request-ID of a /v1/answer response made with this key.",
            param="request_id",
            code="answer_not_found",
        ) from None


def export_rows(
    tracking_uri: str, experiment: str, max_traces: int | None = None
) -> Iterator[dict[str, Any]]:
    """One row per rated answer: the question, the answer, its citations and prompt version,
    the rating, the comment and the chunks that should have been cited."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    found = mlflow.get_experiment_by_name(experiment)
    if found is None:
        raise ValueError(
            f"No MLflow experiment {experiment!r} at {tracking_uri}: no answer was traced "
            "there (is SLIPWAY_TRACE_EXPERIMENT the server's?)."
        )
    traces = mlflow.search_traces(
        experiment_ids=[found.experiment_id],
        filter_string=f"tags.`slipway.route` = '{ANSWER_ROUTE}'",
        order_by=["timestamp_ms ASC"],
        max_results=max_traces,
        return_type="list",
    )
    for trace in traces:
        ratings = [a for a in trace.info.assessments if a.name == RATING]
        if not ratings:
            continue
        expected = [a for a in trace.info.assessments if a.name == EXPECTED]
        inputs = trace.data.spans[0].inputs if trace.data.spans else {}
        outputs = trace.data.spans[0].outputs if trace.data.spans else {}
        for rating in ratings:
            yield {
                "request_id": trace.info.tags.get("request_id"),
                "trace_id": trace.info.trace_id,
                "prompt_version": trace.info.tags.get("prompt_version"),
                "question": (inputs or {}).get("question"),
                "answer": (outputs or {}).get("answer"),
                "finish_reason": (outputs or {}).get("finish_reason"),
                "citations": (outputs or {}).get("citations", []),
                "rating": "positive" if rating.feedback.value else "negative",
                "comment": rating.rationale,
                "expected_chunk_ids": expected[-1].expectation.value if expected else None,
                "rated_by": rating.source.source_id,
                "rated_at_ms": rating.create_time_ms,
            }


def qa_rows(rows: Iterable[Mapping[str, Any]]) -> Iterator[dict[str, Any]]:
    """Rated answers as QA-set rows (``pipelines.evaluate``'s format): each positively rated
    answer becomes a gold answer, its gold documents those of the chunks the rater expected,
    else of the chunks it cited. Negative ratings carry no gold answer and are left out."""
    for row in rows:
        if row["rating"] != "positive" or not row.get("question") or not row.get("answer"):
            continue
        chunks = row.get("expected_chunk_ids") or row.get("citations") or []
        yield {
            "id": row["request_id"],
            "question": row["question"],
            "answers": [row["answer"]],
            "doc_ids": sorted({chunk.rsplit("#", 1)[0] for chunk in chunks}),
        }
