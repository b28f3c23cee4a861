"""Answers: retrieve once (the re-ranker's candidates when there is one), re-rank those hits,
abstain when none is relevant to the question, fit the best chunks into the prompt budget,
generate, mark every sentence with the source it came from; traced to MLflow when sampled."""

from __future__ import annotations

import asyncio

import numpy as np

from slipway.access import Reader
from slipway.api import metrics
from slipway.api.errors import ApiError
from slipway.api.schemas import AnswerRequest, AnswerResponse, Citation, SearchRequest, usage
from slipway.deadlines import bounded
from slipway.generation import Request, Sampling
from slipway.prompts import Prompt
from slipway.rag import grounding, prompts
from slipway.rag.inference import Charge, embed_texts, gen_tokens, generate_text
from slipway.rag.search import rerank_top, search_embedded
from slipway.resources import Resources
from slipway.retrieval.index import ChunkHit, indexed_text


async def answer(
    question: AnswerRequest,
    res: Resources,
    charge: Charge,
    reader: Reader,
    request_id: str = "-",
    unit: str = "-",
    principal: str = "-",
) -> AnswerResponse:
    """A cited answer to ``question`` from the documents ``reader`` may read; ``charge`` is
    asked for the prompt and new tokens before the generator runs. ``unit`` (a key, a user)
    picks the answer prompt's variant when the bundle splits traffic between several. Traced
    to MLflow when sampled, and always when feedback is on (feedback lands on the trace)."""
    template = res.prompts.pick("answer", unit)
    if not res.tracer.sample(always=True):
        return await _answer(question, res, charge, template, reader)
    import mlflow

    with mlflow.start_span(name="answer", span_type="CHAIN") as root:
        root.set_inputs(question.model_dump())
        root.set_attributes(
            {"request_id": request_id, "prompt_version": template.ref, "model": res.model_id}
        )
        mlflow.update_current_trace(
            tags={
                "request_id": request_id,
                "prompt_version": template.ref,
                "principal": principal,
                "slipway.route": "/v1/answer",
            }
        )
        res.tracer.traced(request_id)
        out = await _answer(question, res, charge, template, reader)
        root.set_outputs(
            {
                "answer": out.answer,
                "finish_reason": out.finish_reason,
                "citations": [c.id for c in out.citations],
            }
        )
        return out


async def _answer(
    question: AnswerRequest, res: Resources, charge: Charge, template: Prompt, reader: Reader
) -> AnswerResponse:
    try:
        budget = prompts.prompt_budget(
            res.serve.context_tokens, res.model_context, question.max_new_tokens
        )
    except ValueError as exc:
        raise ApiError(400, f"max_new_tokens: {exc}", param="max_new_tokens") from exc
    top = res.fusion.rerank_top
    candidates = max(question.top_k, top) if res.can_rerank else question.top_k
    tracer = res.tracer
    with tracer.span("retrieve", top_k=candidates, graph=question.graph) as span:
        found, question_vector = await search_embedded(
            SearchRequest(
                query=question.question,
                top_k=candidates,
                filters=question.filters,
                rerank=False,
                graph=question.graph,
            ),
            res,
            reader,
        )
        if span is not None:
            span.set_outputs([h.id for h in found.results])
    with tracer.span("rerank", reranker=res.can_rerank) as span:
        hits = (await rerank_top(res, question.question, found.results, top))[: question.top_k]
        if span is not None:
            span.set_outputs([h.id for h in hits])
    with tracer.span("prompt", budget=budget) as span:
        sources = [prompts.Source(h.id, h.doc_id, h.title, h.text, h.score) for h in hits]
        try:
            prompt, used = await asyncio.to_thread(
                prompts.answer_prompt,
                res.gen_tokenizer,
                template,
                question.question,
                sources,
                budget,
            )
        except ValueError as exc:  # the question leaves no room for sources
            raise ApiError(
                400,
                f"question: {exc} The prompt budget is {budget} tokens "
                f"(less max_new_tokens={question.max_new_tokens}).",
                param="question",
                code="context_length_exceeded",
            ) from exc
        prompt_tokens = await gen_tokens(res, prompt)
        if span is not None:
            span.set_attributes({"sources": len(used), "prompt_tokens": prompt_tokens})
    threshold = (
        res.serve.answer_min_relevance if question.min_relevance is None else question.min_relevance
    )
    with tracer.span("relevance", threshold=threshold) as span:
        relevance = await passage_relevance(res, question.question, hits, question_vector)
        if span is not None:
            span.set_outputs(relevance)
    if grounding.should_abstain(relevance, threshold):
        metrics.answered("no_context", template.ref)
        return AnswerResponse(
            model=res.model_id,
            prompt_version=template.ref,
            index_version=found.index_version,
            answer=grounding.ABSTENTION,
            finish_reason="no_context",
            citations=[],
            usage=usage(0, 0),
        )
    relevance_of = dict(zip((h.id for h in hits), relevance, strict=True))
    await charge(prompt_tokens + question.max_new_tokens)
    call = Request(
        Sampling(
            max_new_tokens=question.max_new_tokens,
            temperature=question.temperature,
            seed=question.seed,
        ),
        prompt=prompt,
    )
    with tracer.span("generate", max_new_tokens=question.max_new_tokens) as span:
        out = await generate_text(res, call)
        if span is not None:
            span.set_attributes(
                {
                    "prompt_tokens": out["prompt_tokens"],
                    "completion_tokens": out["completion_tokens"],
                }
            )
            span.set_outputs(out["text"])
    metrics.tokens("/v1/answer", out["prompt_tokens"], out["completion_tokens"])
    metrics.answered("generated", template.ref)
    text = grounding.attribute(out["text"].strip(), [s.text for s in used])
    marked = grounding.valid_markers(text, len(used))
    return AnswerResponse(
        model=res.model_id,
        prompt_version=template.ref,
        index_version=found.index_version,
        answer=text,
        finish_reason=out["finish_reason"],
        citations=[
            Citation(
                n=i + 1,
                id=s.id,
                doc_id=s.doc_id,
                title=s.title,
                score=s.score,
                relevance=relevance_of[s.id],
                cited=i + 1 in marked,
            )
            for i, s in enumerate(used)
        ],
        usage=usage(out["prompt_tokens"], out["completion_tokens"]),
    )


async def passage_relevance(
    res: Resources,
    question: str,
    hits: list[ChunkHit],
    question_vector: np.ndarray | None = None,
) -> list[float]:
    """Cosine similarity of each hit's indexed text to the question. The passages' vectors are
    the ones the served index stores (its embedder is the served one), read in a worker
    thread; the encoder embeds only what is missing: the question when the search did not
    (a cached result), and any passage the vector store lacks. Embedding the passages again
    here would put a batch of long texts in front of every query waiting for the encoder."""
    if not hits:
        return []
    dense = res.index_state().opened.dense
    stored = await bounded(
        asyncio.to_thread(dense.vectors, [h.id for h in hits]),
        res.serve.search_timeout_s,
        "search",
        "vector store",
    )
    texts = [] if question_vector is not None else [question]
    texts += [indexed_text(h.title, h.text) for h in hits if h.id not in stored]
    fresh = iter(await embed_texts(res, texts) if texts else [])
    query = question_vector if question_vector is not None else next(fresh)
    passages = [stored[h.id] if h.id in stored else next(fresh) for h in hits]
    return grounding.relevance(query, np.stack(passages))
