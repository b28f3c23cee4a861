"""The evaluation use case: a QA set answered by the served bundle through ``/v1/answer``'s own
code path, scored per question (answers, citations, abstention, an LLM judge) with MLflow 3's
GenAI evaluation (``mlflow.genai.evaluate``: one trace per question with its assessments, and
aggregated metrics), plus the retrieval gate's metrics on the same questions; everything as
one flat metrics dict for promotion gates.

Metric names (in [0, 1] but for ``judge_kappa``; :mod:`slipway.evaluation.metrics` has the
definitions):

- ``answer_containment``, ``answer_exact_match``, ``answer_token_f1``: over the answerable
  questions; an abstention, or an error instead of an answer, scores 0.
- ``answer_error_rate``: share of the questions ``/v1/answer`` refused (e.g. a question too long
  for the generator's prompt budget); such a question is neither answered nor abstained.
- ``citation_precision``, ``citation_recall``, ``source_recall``: over the answered, answerable
  questions whose gold documents are given (precision: those that cite something).
- ``marker_rate``: share of the answers (not abstentions) that carry an ``[n]`` marker.
- ``abstain_rate`` (all questions); ``abstain_precision``, ``abstain_recall``, ``abstain_f1``
  when the set has unanswerable questions (and, for precision, something abstained).
- ``judge_faithfulness``, ``judge_relevance``: share of "yes" among the judge's verdicts on the
  answers; ``judge_coverage``: share of those asked that gave a verdict; ``judge_agreement``
  and ``judge_kappa``: how often its faithfulness verdict agrees with containment on the
  answered, answerable questions (agreement rate; Cohen's kappa, in [-1, 1], 0 = chance).
- ``retrieval_<dense|sparse|hybrid>_<ndcg_at_10|recall_at_10|recall_at_100>``: the index
  quality gate's metrics with the questions as queries and their gold documents as judgements.

A metric that is undefined on a set (no unanswerable question, no judge, ...) is left out,
never reported as 0.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

from pydantic import BaseModel

from slipway.api.errors import ApiError
from slipway.api.schemas import AnswerRequest
from slipway.evaluation import metrics as m
from slipway.evaluation.dataset import QAExample
from slipway.evaluation.inprocess import InProcessService
from slipway.evaluation.judge import (
    GeneratorChat,
    Judge,
    JudgeConfig,
    JudgeInfo,
    Verdict,
    endpoint_judge,
)
from slipway.retrieval.evaluation import JudgedQueries, evaluate_searcher, flat_metrics
from slipway.retrieval.hybrid import HybridSearcher

logger = logging.getLogger(__name__)
T = TypeVar("T")
PROGRESS_SECONDS = 30.0


class AnswerSettings(BaseModel):
    """How each question is asked (``/v1/answer``'s request fields)."""

    top_k: int = 4
    max_new_tokens: int = 128
    min_relevance: float | None = None  # None: the service's SLIPWAY_ANSWER_MIN_RELEVANCE

    def request(self, question: str) -> AnswerRequest:
        return AnswerRequest(
            question=question,
            top_k=self.top_k,
            max_new_tokens=self.max_new_tokens,
            min_relevance=self.min_relevance,
        )


class Source(BaseModel):
    """One source an answer was given: its marker, chunk, document, whether it is cited."""

    n: int
    id: str
    doc_id: str
    title: str
    cited: bool
    relevance: float
    text: str


class Answered(BaseModel):
    """What ``/v1/answer`` returned for one question, or the error it answered with."""

    answer: str
    finish_reason: str  # stop | length | no_context (an abstention) | error
    prompt_version: str = ""
    index_version: str = ""
    sources: list[Source] = []
    seconds: float
    error: str = ""


class AnswerScores(BaseModel):
    """The deterministic scores of one answer (None: undefined for this question)."""

    abstained: bool
    failed: bool = False  # /v1/answer answered with an error
    containment: float | None = None
    exact_match: float | None = None
    token_f1: float | None = None
    citation_precision: float | None = None
    citation_recall: float | None = None
    source_recall: float | None = None
    has_marker: bool | None = None


class ExampleResult(BaseModel):
    """One question, the answer it got, its scores and the judge's verdicts."""

    id: str
    question: str
    answers: list[str]
    doc_ids: list[str]
    answer: str
    finish_reason: str
    prompt_version: str
    index_version: str
    sources: list[Source]
    seconds: float
    scores: AnswerScores
    error: str = ""
    judge_faithful: bool | None = None
    judge_relevant: bool | None = None
    judge_note: str = ""


class EvaluationReport(BaseModel):
    """What an evaluation measured: flat metrics, counts, the judge, per-question results."""

    model: str = ""
    index_version: str = ""
    qa_set: str = ""
    metrics: dict[str, float] = {}
    counts: dict[str, int] = {}
    judge: JudgeInfo | None = None
    prompt_versions: dict[str, int] = {}
    metrics_by_prompt: dict[str, dict[str, float]] = {}
    seconds: float = 0.0
    run_id: str | None = None
    skipped: str = ""  # why nothing was evaluated (empty when it ran)
    examples: list[ExampleResult] = []


# --- scoring -----------------------------------------------------------------------------


def score_answer(
    answer: str,
    finish_reason: str,
    sources: Sequence[Source],
    golds: Sequence[str],
    gold_docs: Sequence[str],
) -> AnswerScores:
    """The deterministic scores of one answer (``finish_reason`` ``no_context``: an
    abstention; ``error``: none came) against its question's gold answers and gold documents
    (the module's docstring says over which questions each is defined)."""
    scores = AnswerScores(abstained=finish_reason == "no_context", failed=finish_reason == "error")
    generated = not (scores.abstained or scores.failed)
    if generated:
        scores.has_marker = any(s.cited for s in sources)
    if golds:
        if not generated:
            scores.containment = scores.exact_match = scores.token_f1 = 0.0
        else:
            scores.containment = m.contains_answer(answer, golds)
            scores.exact_match = m.exact_match(answer, golds)
            scores.token_f1 = m.token_f1(answer, golds)
    if golds and gold_docs and generated:
        cited = [s.doc_id for s in sources if s.cited]
        scores.citation_precision = m.citation_precision(cited, gold_docs)
        scores.citation_recall = m.doc_recall(cited, gold_docs)
        scores.source_recall = m.doc_recall([s.doc_id for s in sources], gold_docs)
    return scores


def judge_context(sources: Sequence[Source]) -> list[tuple[int, str, str]]:
    """What faithfulness is judged against: the cited sources, or every source the answer
    was given when it cites none."""
    chosen = [s for s in sources if s.cited] or list(sources)
    return [(s.n, s.title, s.text) for s in chosen]


def aggregate(results: Sequence[ExampleResult], judged: bool) -> dict[str, float]:
    """The flat metrics of a set of per-question results (see the module's docstring)."""
    scores = [r.scores for r in results]
    out: dict[str, float | None] = {
        "answer_containment": m.mean(s.containment for s in scores),
        "answer_exact_match": m.mean(s.exact_match for s in scores),
        "answer_token_f1": m.mean(s.token_f1 for s in scores),
        "citation_precision": m.mean(s.citation_precision for s in scores),
        "citation_recall": m.mean(s.citation_recall for s in scores),
        "source_recall": m.mean(s.source_recall for s in scores),
        "marker_rate": m.mean(
            None if s.has_marker is None else float(s.has_marker) for s in scores
        ),
        "abstain_rate": m.mean(float(s.abstained) for s in scores),
        "answer_error_rate": m.mean(float(s.failed) for s in scores),
    }
    abstain = m.binary_scores([not r.answers for r in results], [s.abstained for s in scores])
    if abstain.support:
        out |= {
            "abstain_precision": abstain.precision,
            "abstain_recall": abstain.recall,
            "abstain_f1": abstain.f1 if abstain.f1 is not None else 0.0,
        }
    if judged:
        answered = [r for r in results if not (r.scores.abstained or r.scores.failed)]
        faithful = [r.judge_faithful for r in answered]
        relevant = [r.judge_relevant for r in answered]
        verdicts = [v for v in faithful + relevant if v is not None]
        pairs = [
            (r.judge_faithful, bool(r.scores.containment))
            for r in answered
            if r.judge_faithful is not None and r.scores.containment is not None
        ]
        out |= {
            "judge_faithfulness": m.mean(float(v) for v in faithful if v is not None),
            "judge_relevance": m.mean(float(v) for v in relevant if v is not None),
            "judge_coverage": len(verdicts) / (2 * len(answered)) if answered else None,
            "judge_agreement": m.agreement([a for a, _ in pairs], [b for _, b in pairs]),
            "judge_kappa": m.cohen_kappa([a for a, _ in pairs], [b for _, b in pairs]),
        }
    return {k: float(v) for k, v in out.items() if v is not None}


# --- MLflow ------------------------------------------------------------------------------


def _sources_of(outputs: Mapping[str, Any]) -> list[Source]:
    return [Source.model_validate(s) for s in outputs.get("sources", [])]


def _feedbacks(scores: AnswerScores) -> list[Any]:
    from mlflow.entities import Feedback

    values: dict[str, float | bool | None] = {
        "answer_containment": scores.containment,
        "answer_exact_match": scores.exact_match,
        "answer_token_f1": scores.token_f1,
        "citation_precision": scores.citation_precision,
        "citation_recall": scores.citation_recall,
        "source_recall": scores.source_recall,
        "has_marker": scores.has_marker,
        "abstained": scores.abstained,
        "answer_failed": scores.failed,
    }
    return [Feedback(name=k, value=v) for k, v in values.items() if v is not None]


def answer_scorer() -> Any:
    """The MLflow scorer of the deterministic metrics (one feedback per defined metric)."""
    from mlflow.genai.scorers import scorer

    def answer_metrics(outputs: Mapping[str, Any], expectations: Mapping[str, Any]) -> list[Any]:
        scores = score_answer(
            outputs["answer"],
            outputs["finish_reason"],
            _sources_of(outputs),
            expectations.get("answers", []),
            expectations.get("doc_ids", []),
        )
        return _feedbacks(scores)

    return scorer(answer_metrics, name="answer_metrics")


class JudgeScorer:
    """The MLflow scorer that asks the judge about each answer, and the verdicts it got (by
    question id) for the report."""

    def __init__(self, judge: Judge) -> None:
        self.judge = judge
        self.verdicts: dict[str, tuple[Verdict, Verdict]] = {}
        self._lock = threading.Lock()

    def scorer(self) -> Any:
        from mlflow.entities import AssessmentSource, Feedback
        from mlflow.genai.scorers import scorer

        source = AssessmentSource(source_type="LLM_JUDGE", source_id=self.judge.info.name)

        def feedback(name: str, verdict: Verdict) -> Any:
            return Feedback(
                name=name,
                value=None if verdict.value is None else ("yes" if verdict.value else "no"),
                rationale=verdict.raw or None,
                error=verdict.error if verdict.value is None else None,
                source=source,
            )

        def judge(inputs: Mapping[str, Any], outputs: Mapping[str, Any]) -> list[Any] | None:
            if outputs["finish_reason"] in ("no_context", "error"):
                return None  # nothing generated: nothing to judge
            question, answer = inputs["question"], outputs["answer"]
            faithful = self.judge.faithfulness(
                question, answer, judge_context(_sources_of(outputs))
            )
            relevant = self.judge.relevance(question, answer)
            with self._lock:
                self.verdicts[str(inputs["id"])] = (faithful, relevant)
            return [
                feedback("judge_faithfulness", faithful),
                feedback("judge_relevance", relevant),
            ]

        return scorer(judge, name="judge")


@contextmanager
def scoring_workers(workers: int) -> Iterator[None]:
    """``mlflow.genai.evaluate``'s thread pools sized to ``workers`` (its default, 10, only
    waits on a judge that answers one question at a time, and exhausts the connections of a
    SQLite tracking store); a size set in ``MLFLOW_GENAI_EVAL_MAX_WORKERS`` wins."""
    name = "MLFLOW_GENAI_EVAL_MAX_WORKERS"
    if name in os.environ:
        yield
        return
    os.environ[name] = str(workers)
    try:
        yield
    finally:
        os.environ.pop(name, None)


@contextmanager
def tracking_run(run_name: str) -> Iterator[Any]:
    """The active MLflow run (a ZenML step's), or a new one for the evaluation."""
    import mlflow

    active = mlflow.active_run()
    if active is not None:
        yield active
        return
    with mlflow.start_run(run_name=run_name) as run:
        yield run


# --- answering ---------------------------------------------------------------------------


def run_sync(make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine to completion from synchronous code, also where an event loop is
    already running in this thread (a notebook): then in a thread of its own."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(make())
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = asyncio.run(make())
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=target, name="slipway-evaluation")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


async def answer_one(
    service: InProcessService, example: QAExample, settings: AnswerSettings
) -> Answered:
    """One question's answer and the sources it was given (with their texts); a request the
    use case refuses (``ApiError``: a question too long for the prompt budget, a timeout)
    is recorded as an ``error`` answer."""
    t = time.monotonic()
    try:
        response = await service.answer(settings.request(example.question), unit=example.id)
    except ApiError as exc:
        return Answered(
            answer="",
            finish_reason="error",
            seconds=time.monotonic() - t,
            error=f"{exc.status} {exc.message}",
        )
    seconds = time.monotonic() - t
    text_of = service.resources.index_state().opened.text_of
    return Answered(
        answer=response.answer,
        finish_reason=response.finish_reason,
        prompt_version=response.prompt_version,
        index_version=response.index_version,
        sources=[
            Source(
                n=c.n,
                id=c.id,
                doc_id=c.doc_id,
                title=c.title,
                cited=c.cited,
                relevance=c.relevance,
                text=text_of(c.id),
            )
            for c in response.citations
        ],
        seconds=seconds,
    )


async def answer_all(
    service: InProcessService, examples: Sequence[QAExample], settings: AnswerSettings
) -> list[Answered]:
    """Every question's answer, one after the other, with a progress line every half
    minute."""
    out: list[Answered] = []
    started = last = time.monotonic()
    for i, example in enumerate(examples, start=1):
        out.append(await answer_one(service, example, settings))
        now = time.monotonic()
        if now - last >= PROGRESS_SECONDS or i == len(examples):
            last = now
            logger.info(
                "Answered %d/%d questions (%d abstentions, %d errors) in %.0f s",
                i,
                len(examples),
                sum(a.finish_reason == "no_context" for a in out),
                sum(a.finish_reason == "error" for a in out),
                now - started,
            )
    failed = [a.error for a in out if a.error]
    if failed:
        logger.warning(
            "%d of %d questions got an error instead of an answer, e.g.: %s",
            len(failed),
            len(out),
            failed[0],
        )
    return out


def retrieval_metrics(service: InProcessService, examples: Sequence[QAExample]) -> dict[str, float]:
    """The index gate's metrics (nDCG@10, Recall@10/100 of dense, sparse, hybrid; with a graph
    snapshot also of graph retrieval and hybrid + graph at the gate's weight) on the
    answerable questions that name their gold documents; empty when none does."""
    judged = [e for e in examples if e.answerable and e.doc_ids]
    if not judged:
        return {}
    res = service.resources
    state = res.check_index()
    opened = state.opened
    searcher = HybridSearcher(service.encoder, opened.dense, opened.sparse)
    queries = JudgedQueries(
        queries={e.id: e.question for e in judged},
        qrels={e.id: dict.fromkeys(e.doc_ids, 1) for e in judged},
    )
    gate = opened.manifest.graph
    measured = evaluate_searcher(
        searcher,
        queries,
        opened.doc_of,
        graph=state.graph_retriever(res.nlp).search_many if state.has_graph else None,
        fusions=[(gate.weight, gate.rrf_k) if gate is not None else (1.0, 60)],
    )
    return {f"retrieval_{k}": v for k, v in flat_metrics(measured).items()}


def served_judge(service: InProcessService, max_tokens: int = 16, structured: bool = True) -> Judge:
    """The default judge: the served generator itself, in this process (a weak judge)."""
    res = service.resources
    chat = GeneratorChat(
        service.generator.complete_sync,
        res.gen_tokenizer,
        res.model_context,
        service.generator.model.guided,
        f"the served generator ({res.model_id}, in-process)",
    )
    return Judge(chat, structured, max_tokens)


def make_judge(
    config: JudgeConfig,
    service: InProcessService,
    fetch_secret: Callable[[str], Mapping[str, str]] | None = None,
) -> Judge | None:
    """The judge ``config`` names: none when disabled, the endpoint at ``base_url`` (or in
    ``secret``), else the served generator in this process (a weak judge, flagged)."""
    if not config.enabled:
        return None
    if config.base_url or config.secret:
        return endpoint_judge(config, fetch_secret)
    return served_judge(service, config.max_tokens, config.structured)


def evaluate_bundle(
    service: InProcessService,
    examples: Sequence[QAExample],
    judge: Judge | None = None,
    settings: AnswerSettings | None = None,
    retrieval: bool = True,
    qa_set: str = "",
    run_name: str = "slipway-evaluation",
) -> EvaluationReport:
    """Answer ``examples`` with ``service`` and score them: per question with
    ``mlflow.genai.evaluate`` (deterministic scorers and, when given, the judge) into the
    active MLflow run (or a new one), then the flat metrics (also logged there), the
    retrieval metrics and a per-question table (``evaluation/answers.json``)."""
    import mlflow

    if not examples:
        raise ValueError("The QA set has no question to evaluate.")
    settings = settings or AnswerSettings()
    started = time.monotonic()
    answered = run_sync(lambda: answer_all(service, examples, settings))
    rows = [
        {
            "inputs": {"question": e.question, "id": e.id},
            "outputs": r.model_dump(exclude={"seconds"}),
            "expectations": {"answers": list(e.answers), "doc_ids": list(e.doc_ids)},
        }
        for e, r in zip(examples, answered, strict=True)
    ]
    judging = JudgeScorer(judge) if judge is not None else None
    if judge is not None and judge.info.weak:
        logger.warning("%s", judge.info.note)
    scorers = [answer_scorer(), *([judging.scorer()] if judging is not None else [])]
    with tracking_run(run_name) as run:
        logger.info("Scoring %d answers with mlflow.genai.evaluate", len(rows))
        with scoring_workers(judge.model.concurrency if judge is not None else 2):
            mlflow.genai.evaluate(data=rows, scorers=scorers)
        results = []
        for e, r in zip(examples, answered, strict=True):
            verdicts = judging.verdicts.get(e.id) if judging is not None else None
            results.append(
                ExampleResult(
                    id=e.id,
                    question=e.question,
                    answers=list(e.answers),
                    doc_ids=list(e.doc_ids),
                    answer=r.answer,
                    finish_reason=r.finish_reason,
                    prompt_version=r.prompt_version,
                    index_version=r.index_version,
                    sources=r.sources,
                    seconds=r.seconds,
                    scores=score_answer(r.answer, r.finish_reason, r.sources, e.answers, e.doc_ids),
                    error=r.error,
                    judge_faithful=verdicts[0].value if verdicts else None,
                    judge_relevant=verdicts[1].value if verdicts else None,
                    judge_note="; ".join(v.error for v in verdicts or () if v.error is not None),
                )
            )
        flat = aggregate(results, judged=judging is not None)
        if judging is not None and results and flat.get("judge_coverage", 1.0) == 0.0:
            errors = {r.judge_note for r in results if r.judge_note}
            raise RuntimeError(
                f"The judge ({judging.judge.info.name}) gave no verdict at all: "
                f"{'; '.join(sorted(errors))[:600]}. Check judge.base_url, judge.model and "
                "its key, or set judge.structured: false for an endpoint without JSON output."
            )
        if retrieval:
            flat |= retrieval_metrics(service, examples)
        versions = Counter(r.prompt_version for r in results)
        by_prompt = (
            {
                v: aggregate([r for r in results if r.prompt_version == v], judging is not None)
                for v in sorted(versions)
            }
            if len(versions) > 1
            else {}
        )
        mlflow.log_metrics(flat)
        rows_out = [_table_row(r) for r in results]
        mlflow.log_table(
            {k: [row[k] for row in rows_out] for k in rows_out[0]}, "evaluation/answers.json"
        )
        mlflow.set_tags(
            {
                "slipway.evaluation.model": service.resources.model_id,
                "slipway.evaluation.qa_set": qa_set,
                "slipway.evaluation.judge": judge.info.name if judge is not None else "none",
                "slipway.evaluation.weak_judge": str(judge is not None and judge.info.weak),
            }
        )
        run_id = run.info.run_id
    return EvaluationReport(
        model=service.resources.model_id,
        index_version=service.resources.index_state().opened.version,
        qa_set=qa_set,
        metrics=flat,
        counts={
            "questions": len(results),
            "answerable": sum(bool(r.answers) for r in results),
            "unanswerable": sum(not r.answers for r in results),
            "abstained": sum(r.scores.abstained for r in results),
            "errors": sum(r.scores.failed for r in results),
            "judged": sum(r.judge_faithful is not None for r in results),
        },
        judge=judge.info if judge is not None else None,
        prompt_versions=dict(versions),
        metrics_by_prompt=by_prompt,
        seconds=time.monotonic() - started,
        run_id=run_id,
        examples=results,
    )


def _table_row(result: ExampleResult) -> dict[str, Any]:
    return {
        "id": result.id,
        "question": result.question,
        "gold": " | ".join(result.answers),
        "answer": result.answer,
        "finish_reason": result.finish_reason,
        "prompt_version": result.prompt_version,
        "cited": " ".join(s.doc_id for s in result.sources if s.cited),
        "gold_docs": " ".join(result.doc_ids),
        **{k: v for k, v in result.scores.model_dump().items()},
        "judge_faithful": result.judge_faithful,
        "judge_relevant": result.judge_relevant,
        "seconds": round(result.seconds, 3),
        "error": result.error,
    }
