"""Slipway's own routes: each parses, calls a use case (``slipway.rag``) and shapes the reply."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse

from slipway.api import metrics
from slipway.api.auth import Principal
from slipway.api.deps import (
    ERRORS,
    STREAMED,
    Res,
    charger,
    check_context,
    check_model,
    experiment_unit,
    guard,
    sse,
)
from slipway.api.keys import Scope
from slipway.api.schemas import (
    AnswerRequest,
    AnswerResponse,
    EmbedRequest,
    EmbedResponse,
    EntitiesResponse,
    FeedbackRequest,
    FeedbackResponse,
    GenerateRequest,
    GenerateResponse,
    RerankRequest,
    RerankResponse,
    SearchRequest,
    SearchResponse,
    SimilarEntitiesResponse,
    SummarizeRequest,
    SummarizeResponse,
    TokenizeRequest,
    TokenizeResponse,
    usage,
)
from slipway.generation import Request as GenRequest
from slipway.generation import Sampling
from slipway.rag import answer as answers
from slipway.rag import feedback as feedbacks
from slipway.rag import graph, tools
from slipway.rag import search as searches
from slipway.rag import summarize as summaries
from slipway.rag.inference import (
    embed_texts,
    embed_tokens,
    gen_tokens,
    generate_text,
    generation_events,
)

router = APIRouter(tags=["slipway"])


@router.post("/v1/embed", response_model=EmbedResponse, responses=ERRORS)
async def embed(
    body: EmbedRequest,
    request: Request,
    res: Res,
    who: Annotated[Principal, Depends(guard(Scope.EMBED))],
) -> EmbedResponse:
    """Unit vectors for up to `SLIPWAY_MAX_TEXTS` texts, in input order (batched with other
    requests by the encoder)."""
    tokens = await embed_tokens(res, body.texts)
    await charger(request, res, who)(tokens)
    vectors = await embed_texts(res, body.texts)
    metrics.tokens("/v1/embed", tokens)
    return EmbedResponse(
        model=res.model_id,
        dimension=int(vectors.shape[1]),
        embeddings=vectors.tolist(),
        usage=usage(tokens),
    )


@router.post("/v1/generate", response_model=GenerateResponse, responses=STREAMED)
async def generate(
    body: GenerateRequest,
    request: Request,
    res: Res,
    who: Annotated[Principal, Depends(guard(Scope.GENERATE))],
) -> Any:
    """Complete a prompt (chat template applied); greedy when `temperature` is 0. With
    `stream`, server-sent events: `{"text"}` pieces, then `{"finish_reason", "usage"}`,
    then `[DONE]`."""
    prompt_tokens = await gen_tokens(res, body.prompt)
    check_context(res, prompt_tokens, body.max_new_tokens, "prompt")
    await charger(request, res, who)(prompt_tokens + body.max_new_tokens)
    call = GenRequest(
        Sampling(body.max_new_tokens, body.temperature, body.top_p, tuple(body.stop), body.seed),
        prompt=body.prompt,
    )
    if body.stream:
        stream = await generation_events(res, call)  # 503/504 here, before the headers

        async def events() -> AsyncIterator[bytes]:
            async for event in stream:
                if "text" in event:
                    yield sse(event)
                else:
                    metrics.tokens(
                        "/v1/generate", event["prompt_tokens"], event["completion_tokens"]
                    )
                    yield sse(
                        {
                            "finish_reason": event["finish_reason"],
                            "usage": usage(
                                event["prompt_tokens"], event["completion_tokens"]
                            ).model_dump(),
                        }
                    )
            yield sse("[DONE]")

        return StreamingResponse(events(), media_type="text/event-stream")
    out = await generate_text(res, call)
    metrics.tokens("/v1/generate", out["prompt_tokens"], out["completion_tokens"])
    return GenerateResponse(
        model=res.model_id,
        text=out["text"],
        finish_reason=out["finish_reason"],
        usage=usage(out["prompt_tokens"], out["completion_tokens"]),
    )


@router.post("/v1/summarize", response_model=SummarizeResponse, responses=ERRORS)
async def summarize(
    body: SummarizeRequest,
    request: Request,
    res: Res,
    who: Annotated[Principal, Depends(guard(Scope.GENERATE))],
) -> SummarizeResponse:
    """Summarize a text, or indexed documents by id, in about `max_words` words; a text
    longer than the model's context is summarized piece by piece, then the pieces'
    summaries are summarized (map-reduce)."""
    return await summaries.summarize(
        body, res, charger(request, res, who), res.reader(who), experiment_unit(request, who)
    )


@router.post("/v1/search", response_model=SearchResponse, responses=ERRORS)
async def search(
    body: SearchRequest, res: Res, who: Annotated[Principal, Depends(guard(Scope.SEARCH))]
) -> SearchResponse:
    """Hybrid (dense + BM25, fused) search over the published index, with metadata filters,
    re-ranking when a re-ranker is configured, and optional knowledge-graph expansion; only
    documents the caller's principals may read; `group_by: "document"` collapses the hits to
    one per document."""
    return await searches.search(body, res, res.reader(who))


@router.post("/v1/rerank", response_model=RerankResponse, responses=ERRORS)
async def rerank(
    body: RerankRequest, res: Res, who: Annotated[Principal, Depends(guard(Scope.SEARCH))]
) -> RerankResponse:
    """Score `documents` (texts) or `ids` (chunks of the served index the caller may read)
    against `query` with the bundle's re-ranker, best first (TEI's and Cohere's shape); 404
    `model_not_found` when the served bundle has no re-ranker."""
    check_model(res, body.model)
    return await tools.rerank(body, res, res.reader(who))


@router.post("/v1/tokenize", response_model=TokenizeResponse, responses=ERRORS)
async def tokenize(
    body: TokenizeRequest, res: Res, _: Annotated[Principal, Depends(guard())]
) -> TokenizeResponse:
    """Token ids and counts of texts under the generator's (default) or the embedder's
    tokenizer, with the model's context length (vLLM's /tokenize)."""
    check_model(res, body.model)
    return await run_in_threadpool(tools.tokenize, body, res)


@router.post("/v1/answer", response_model=AnswerResponse, responses=ERRORS)
async def answer(
    body: AnswerRequest,
    request: Request,
    res: Res,
    who: Annotated[Principal, Depends(guard(Scope.SEARCH, Scope.GENERATE))],
) -> AnswerResponse:
    """Retrieval-augmented answer: retrieve, re-rank, fit the best chunks into the prompt
    budget, generate, and cite the chunks used as [n]."""
    return await answers.answer(
        body,
        res,
        charger(request, res, who),
        res.reader(who),
        getattr(request.state, "request_id", "-"),
        experiment_unit(request, who),
        who.id,
    )


@router.post("/v1/feedback", response_model=FeedbackResponse, responses=ERRORS)
async def feedback(
    body: FeedbackRequest, res: Res, who: Annotated[Principal, Depends(guard(Scope.FEEDBACK))]
) -> FeedbackResponse:
    """Rate one of your answers by its request id (the X-Request-ID of the /v1/answer
    response), with an optional comment and the chunk ids it should have cited; stored as
    MLflow assessments on the answer's trace (`slipway feedback export` reads them back)."""
    return await feedbacks.record(body, res, who.id)


@router.get("/v1/graph/entities/{name}", response_model=EntitiesResponse, responses=ERRORS)
async def graph_entity(
    name: Annotated[str, Path(min_length=1, max_length=200, pattern=r"\S")],
    res: Res,
    who: Annotated[Principal, Depends(guard(Scope.SEARCH))],
    limit: Annotated[int, Query(ge=1, le=50)] = 10,
) -> EntitiesResponse:
    """Entities by id (`TYPE:name`) or name, each with its strongest neighbours; only those
    mentioned in documents the caller may read, counted over those documents."""
    return await graph.entities(name, limit, res, res.reader(who))


@router.get(
    "/v1/graph/entities/{id}/similar", response_model=SimilarEntitiesResponse, responses=ERRORS
)
async def graph_similar(
    id: Annotated[str, Path(min_length=3, max_length=200, pattern=r"^[A-Z_]+:\S")],
    res: Res,
    who: Annotated[Principal, Depends(guard(Scope.SEARCH))],
    limit: Annotated[int, Query(ge=1, le=50)] = 10,
) -> SimilarEntitiesResponse:
    """The entities whose graph embeddings (the GNN trained on the co-occurrence graph) are
    closest to entity `id` (`TYPE:name`); only entities mentioned in documents the caller may
    read."""
    return await graph.similar(id, limit, res, res.reader(who))
