"""The HTTP API: a FastAPI app over a :class:`~slipway.api.runtime.Runtime`.

BentoML mounts it (``bento/service.py``) and adds ``/livez``, ``/readyz`` and ``/metrics``;
tests can run it in-process on local model clients. Every ``/v1`` route needs credentials
with a scope; errors are OpenAI-shaped JSON with the right status."""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Annotated, Any

import numpy as np
from fastapi import Depends, FastAPI, Path, Query, Request, Security
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.routing import APIRoute
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException

from slipway import __version__
from slipway.api import metrics, rag
from slipway.api.auth import Principal
from slipway.api.errors import ApiError, from_exception, from_validation, rate_limited
from slipway.api.keys import AuthError, Scope, ScopeError
from slipway.api.middleware import API_VERSION, ApiMiddleware, Deadlines, Deprecated, Gate, Load
from slipway.api.watchdog import Watchdog
from slipway.api.ratelimit import Limits
from slipway.api.runtime import Runtime, bounded, bounded_events, manifest_brief
from slipway.api.schemas import (
    LIMITS,
    AnswerRequest,
    AnswerResponse,
    ChatRequest,
    ChatResponse,
    Citation,
    CompletionRequest,
    CompletionResponse,
    EmbeddingsRequest,
    EmbeddingsResponse,
    EmbedRequest,
    EmbedResponse,
    EntitiesResponse,
    EntityOut,
    ErrorBody,
    GenerateRequest,
    GenerateResponse,
    ModelCard,
    ModelsResponse,
    Neighbour,
    SearchRequest,
    SearchResponse,
    SummarizeRequest,
    SummarizeResponse,
    Usage,
)
from slipway.generation import Request as GenRequest
from slipway.generation import Sampling
from slipway.retrieval.hybrid import FusionConfig
from slipway.retrieval.index import ChunkHit, indexed_text
from slipway.retrieval.rerank import Reranker, rerank

# Credential and rate-limit look-ups in Redis, off the event loop, never behind long work.
_GATE_THREADS = ThreadPoolExecutor(max_workers=4, thread_name_prefix="slipway-gate")
_bearer = HTTPBearer(auto_error=False, description="An API key (sk-slipway-...) or a JWT.")
_api_key = APIKeyHeader(name="X-API-Key", auto_error=False, description="An API key.")
_ERRORS = {status: {"model": ErrorBody, "description": text} for status, text in {
    400: "Invalid request (the field is named)", 401: "Missing or invalid credentials",
    403: "The credential lacks the route's scope", 404: "Not found",
    413: "Body too large", 415: "Body is not JSON", 429: "Rate limit reached (see Retry-After)",
    503: "Overloaded, or a backend (index, graph) unavailable"}.items()}
_EVENT = {"type": "object", "required": ["data"], "properties": {
    "data": {"type": "string", "description": "a JSON object, or [DONE] last"},
    "event": {"type": "string"}, "id": {"type": "string"}}}
_SSE = {200: {"content": {"text/event-stream": {"schema": _EVENT}},
              "description": "JSON, or server-sent events when `stream` is true"}}
DEFAULT_CHAT_TOKENS = 256


def runtime(request: Request) -> Runtime:
    """The app's runtime (set when the service starts)."""
    rt = getattr(request.app.state, "runtime", None)
    if rt is None:
        raise ApiError(503, "The service is starting.", type="server_error", code="starting")
    return rt


Rt = Annotated[Runtime, Depends(runtime)]


def guard(*scopes: Scope) -> Callable[..., Principal]:
    """A dependency: the caller the gate authenticated (see :func:`gate`) must hold every scope
    in ``scopes``. The credential parameters only document the security schemes."""

    def dependency(request: Request,
                   bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
                   api_key: Annotated[str | None, Security(_api_key)]) -> Principal:
        principal: Principal | None = getattr(request.state, "caller", None)
        if principal is None:  # the gate guards every /v1 path; nothing else gets here
            raise AuthError("No credentials were checked for this route.")
        for scope in scopes:
            principal.require(scope)
        return principal

    return dependency


def credential(headers: dict[str, str]) -> str | None:
    """The API key or JWT of a request: ``Authorization: Bearer ...`` or ``X-API-Key``."""
    scheme, _, value = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return headers.get("x-api-key") or None


def gate(app: FastAPI) -> Gate:
    """The cheap checks before a body is read or a slot taken: authenticate the caller, then
    charge its request bucket (the caller and rate-limit headers go into the scope's state)."""

    def check(state: dict[str, Any], headers: dict[str, str]) -> ApiError | None:
        rt: Runtime | None = getattr(app.state, "runtime", None)
        if rt is None:
            return ApiError(503, "The service is starting.", type="server_error",
                            code="starting")
        try:
            principal = rt.auth.authenticate(credential(headers))
            if not principal.scopes:
                raise ScopeError("This credential has no scope.")
        except (AuthError, ScopeError) as exc:
            return from_exception(exc)
        state["principal"], state["caller"] = principal.id, principal
        decision = rt.limiter.acquire(principal.id, Limits(principal.limits.requests_per_minute))
        state["ratelimit_headers"] = decision.headers()
        if not decision.allowed:
            metrics.rate_limited("requests")
            return rate_limited(decision.retry_after)
        return None

    async def run(scope: dict[str, Any], headers: dict[str, str]) -> ApiError | None:
        rt: Runtime | None = getattr(app.state, "runtime", None)
        if rt is not None and rt.remote_credentials:  # Redis round trips: off the loop
            return await asyncio.get_running_loop().run_in_executor(
                _GATE_THREADS, check, scope["state"], headers)
        return check(scope["state"], headers)

    return run


async def charge_tokens(request: Request, rt: Runtime, principal: Principal, tokens: int) -> None:
    """Charge ``tokens`` to the caller's token bucket; 429 when it cannot pay."""
    if not principal.limits.tokens_per_minute or tokens <= 0:
        return
    decision = await run_in_threadpool(
        rt.limiter.acquire, principal.id, Limits(None, principal.limits.tokens_per_minute),
        tokens)
    if not decision.allowed:
        metrics.rate_limited("tokens")
        headers = dict(getattr(request.state, "ratelimit_headers", {}))
        headers["Retry-After"] = decision.headers()["Retry-After"]
        request.state.ratelimit_headers = headers
        raise ApiError(429, f"Token rate limit reached ({tokens} tokens asked, "
                       f"{principal.limits.tokens_per_minute}/min allowed); retry in "
                       f"{headers['Retry-After']} s.", type="rate_limit_error",
                       code="rate_limit_exceeded")


def check_context(rt: Runtime, prompt_tokens: int, max_new_tokens: int, param: str) -> None:
    """400 when a prompt and its new tokens do not fit the generator's context."""
    context = rt.model_context
    if context and prompt_tokens + rag.TEMPLATE_RESERVE + max_new_tokens > context:
        raise ApiError(400, f"{param}: {prompt_tokens} prompt tokens plus {max_new_tokens} new "
                       f"tokens exceed the model's {context}-token context; shorten it or ask "
                       "for fewer new tokens.", param=param, code="context_length_exceeded")


def _usage(prompt: int, completion: int = 0) -> Usage:
    return Usage(prompt_tokens=prompt, completion_tokens=completion,
                 total_tokens=prompt + completion)


def _sse(data: Any) -> bytes:
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n".encode()


async def embed_texts(rt: Runtime, texts: list[str]) -> np.ndarray:
    """Vectors for ``texts``: cached ones from the cache, the rest in one encoder call."""
    versions = rt.versions()
    keys: list[str] = []
    found: dict[int, list[float]] = {}
    for i, text in enumerate(texts):
        key, value = rt.cached("embed", versions, text)
        keys.append(key)
        if value is not None:
            found[i] = value
    missing = [i for i in range(len(texts)) if i not in found]
    if missing:
        vectors = np.asarray(await bounded(rt.embedder.embed([texts[i] for i in missing]),
                                           rt.serve.encoder_timeout_s, "encoder", "encoder"),
                             np.float32)
        for i, vector in zip(missing, vectors, strict=True):
            found[i] = vector.tolist()
            rt.remember(keys[i], found[i])
    return np.asarray([found[i] for i in range(len(texts))], dtype=np.float32)


def generation_events(rt: Runtime, call: GenRequest) -> AsyncIterator[dict[str, Any]]:
    """A generation's events, each within the generator's deadline of the last."""
    return bounded_events(rt.generator.events(call), rt.serve.generator_timeout_s, "generator")


async def generate_text(rt: Runtime, request: GenRequest) -> dict[str, Any]:
    """A whole generation; greedy ones are cached per model version."""
    cacheable = request.sampling.greedy
    key, value = rt.cached("generate", rt.versions(), request.to_dict()) if cacheable else ("", None)
    if value is not None:
        return dict(value)
    out = await bounded(rt.generator.complete(request), rt.serve.generator_timeout_s,
                        "generator", "generator")
    if cacheable:
        rt.remember(key, out)
    return out


def create_app(deprecated: dict[str, Deprecated] | None = None) -> FastAPI:
    """The API app; ``deprecated`` (default: ``SLIPWAY_DEPRECATED_ROUTES``) marks routes."""
    if deprecated is None:
        deprecated = {route: Deprecated.model_validate(value)
                      for route, value in LIMITS.deprecated_routes.items()}
    app = FastAPI(title="Slipway API", version=API_VERSION,
                  description=f"Slipway {__version__}: embeddings, generation, summaries, hybrid "
                              "search, RAG answers, the knowledge graph and OpenAI-compatible "
                              "routes. Send an API key as `Authorization: Bearer <key>`.",
                  docs_url="/docs", redoc_url=None)
    app.state.load = Load(LIMITS.max_concurrency)
    app.state.watchdog = Watchdog(LIMITS.watchdog_stall_s)
    app.add_middleware(ApiMiddleware, max_body_bytes=LIMITS.max_body_bytes,
                       max_concurrency=LIMITS.max_concurrency, deprecated=deprecated,
                       gate=gate(app), load=app.state.load,
                       deadlines=Deadlines(LIMITS.body_timeout_s, LIMITS.request_timeout_s,
                                           LIMITS.stream_timeout_s))
    _exception_handlers(app)
    _routes(app)
    for route in app.routes:
        if getattr(route, "path", None) in deprecated:
            route.deprecated = True  # type: ignore[attr-defined]

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version,
                                 description=app.description, routes=app.routes)
            schema["info"]["x-slipway-version"] = __version__
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def _exception_handlers(app: FastAPI) -> None:
    def error(exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers())

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return error(exc)

    @app.exception_handler(AuthError)
    async def auth_error(_: Request, exc: AuthError) -> JSONResponse:
        return error(from_exception(exc))

    @app.exception_handler(ScopeError)
    async def scope_error(_: Request, exc: ScopeError) -> JSONResponse:
        return error(from_exception(exc))

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error(from_validation(exc.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        codes = {404: "not_found", 405: "method_not_allowed", 413: "body_too_large"}
        response = error(ApiError(exc.status_code, str(exc.detail),
                                  code=codes.get(exc.status_code, "invalid_request")))
        if exc.headers:
            response.headers.update(exc.headers)
        return response


def _routes(app: FastAPI) -> None:
    @app.post("/v1/embed", response_model=EmbedResponse, responses=_ERRORS, tags=["slipway"])
    async def embed(body: EmbedRequest, request: Request, rt: Rt,
                    who: Annotated[Principal, Depends(guard(Scope.EMBED))]) -> EmbedResponse:
        """Unit vectors for up to `SLIPWAY_MAX_TEXTS` texts, in input order (batched with other
        requests by the encoder service)."""
        tokens = await run_in_threadpool(rt.embed_tokens, body.texts)
        await charge_tokens(request, rt, who, tokens)
        vectors = await embed_texts(rt, body.texts)
        metrics.tokens("/v1/embed", tokens)
        return EmbedResponse(model=rt.model_id, dimension=int(vectors.shape[1]),
                             embeddings=vectors.tolist(), usage=_usage(tokens))

    @app.post("/v1/generate", response_model=GenerateResponse, tags=["slipway"],
              responses={**_ERRORS, **_SSE})
    async def generate(body: GenerateRequest, request: Request, rt: Rt,
                       who: Annotated[Principal, Depends(guard(Scope.GENERATE))]) -> Any:
        """Complete a prompt (chat template applied); greedy when `temperature` is 0. With
        `stream`, server-sent events: `{"text"}` pieces, then `{"finish_reason", "usage"}`,
        then `[DONE]`."""
        prompt_tokens = await run_in_threadpool(rt.gen_tokens, body.prompt)
        check_context(rt, prompt_tokens, body.max_new_tokens, "prompt")
        await charge_tokens(request, rt, who, prompt_tokens + body.max_new_tokens)
        call = GenRequest(Sampling(body.max_new_tokens, body.temperature, body.top_p,
                                   tuple(body.stop), body.seed), prompt=body.prompt)
        if body.stream:
            async def events() -> AsyncIterator[bytes]:
                async for event in generation_events(rt, call):
                    if "text" in event:
                        yield _sse(event)
                    else:
                        metrics.tokens("/v1/generate", event["prompt_tokens"],
                                       event["completion_tokens"])
                        yield _sse({"finish_reason": event["finish_reason"], "usage": _usage(
                            event["prompt_tokens"], event["completion_tokens"]).model_dump()})
                yield _sse("[DONE]")

            return StreamingResponse(events(), media_type="text/event-stream")
        out = await generate_text(rt, call)
        metrics.tokens("/v1/generate", out["prompt_tokens"], out["completion_tokens"])
        return GenerateResponse(model=rt.model_id, text=out["text"],
                                finish_reason=out["finish_reason"],
                                usage=_usage(out["prompt_tokens"], out["completion_tokens"]))

    @app.post("/v1/summarize", response_model=SummarizeResponse, responses=_ERRORS,
              tags=["slipway"])
    async def summarize(body: SummarizeRequest, request: Request, rt: Rt,
                        who: Annotated[Principal, Depends(guard(Scope.GENERATE))]
                        ) -> SummarizeResponse:
        """Summarize a text, or indexed documents by id, in about `max_words` words; a text
        longer than the model's context is summarized piece by piece, then the pieces'
        summaries are summarized (map-reduce)."""
        if body.document_ids is not None:
            text = _document_text(rt, body.document_ids)
        else:
            assert body.text is not None
            text = body.text
        new_tokens = rag.summary_tokens(body.max_words, LIMITS.max_new_tokens)
        try:
            budget = rag.prompt_budget(LIMITS.context_tokens, rt.model_context, new_tokens)
            pieces = await run_in_threadpool(rag.map_pieces, rt.gen_tokenizer, text, budget,
                                             body.max_words)
        except ValueError as exc:
            raise ApiError(400, f"max_words: {exc}", param="max_words") from exc
        text_tokens = await run_in_threadpool(rt.gen_tokens, text)
        await charge_tokens(request, rt, who, text_tokens + new_tokens * len(pieces))
        sampling = Sampling(max_new_tokens=new_tokens)
        prompt_total = completion_total = 0
        n_pieces = len(pieces)
        for _ in range(6):  # map, then reduce until one text is left
            outs = [await generate_text(rt, GenRequest(sampling, rag.summary_prompt(p, body.max_words)))
                    for p in pieces]
            prompt_total += sum(o["prompt_tokens"] for o in outs)
            completion_total += sum(o["completion_tokens"] for o in outs)
            if len(outs) == 1:
                break
            groups = rag.reduce_groups(rt.gen_tokenizer, [o["text"] for o in outs], budget,
                                       body.max_words)
            pieces = groups if len(groups) < len(outs) else ["\n".join(
                rag.truncate(rt.gen_tokenizer, o["text"], budget // (2 * len(outs))) for o in outs)]
        metrics.tokens("/v1/summarize", prompt_total, completion_total)
        return SummarizeResponse(model=rt.model_id, summary=outs[0]["text"].strip(),
                                 document_ids=body.document_ids or [], pieces=n_pieces,
                                 usage=_usage(prompt_total, completion_total))

    @app.post("/v1/search", response_model=SearchResponse, responses=_ERRORS, tags=["slipway"])
    async def search(body: SearchRequest, rt: Rt,
                     _: Annotated[Principal, Depends(guard(Scope.SEARCH))]) -> SearchResponse:
        """Hybrid (dense + BM25, fused) search over the published index, with metadata filters,
        re-ranking when a re-ranker is configured, and optional knowledge-graph expansion."""
        return await run_search(rt, body.query, body.top_k, body.filters, body.rerank, body.graph)

    @app.post("/v1/answer", response_model=AnswerResponse, responses=_ERRORS, tags=["slipway"])
    async def answer(body: AnswerRequest, request: Request, rt: Rt,
                     who: Annotated[Principal, Depends(guard(Scope.SEARCH, Scope.GENERATE))]
                     ) -> AnswerResponse:
        """Retrieval-augmented answer: retrieve, re-rank, fit the best chunks into the prompt
        budget, generate, and cite the chunks used as [n]."""
        return await run_answer(rt, request, who, body)

    @app.get("/v1/graph/entities/{name}", response_model=EntitiesResponse, responses=_ERRORS,
             tags=["slipway"])
    async def graph_entity(
            name: Annotated[str, Path(min_length=1, max_length=200, pattern=r"\S")], rt: Rt,
            _: Annotated[Principal, Depends(guard(Scope.SEARCH))],
            limit: Annotated[int, Query(ge=1, le=50)] = 10) -> EntitiesResponse:
        """Entities by id (`TYPE:name`) or name, each with its strongest neighbours."""
        return await bounded(run_in_threadpool(entity_lookup, rt, name, limit),
                             rt.serve.graph_timeout_s, "graph", "knowledge graph")

    @app.get("/v1/models", response_model=ModelsResponse, responses=_ERRORS, tags=["openai"])
    async def models(rt: Rt, _: Annotated[Principal, Depends(guard())]) -> ModelsResponse:
        """Served model versions, precisions and providers, and the index version (also in
        OpenAI's list shape)."""
        manifest = rt.served.bundle.manifest
        embedder, generator = await rt.embedder.describe(), await rt.generator.describe()
        try:
            opened = rt.index_state().opened
            index = {"name": LIMITS.index_name, "version": opened.version,
                     "documents": len(opened.manifest.documents), "chunks": opened.chunk_count}
        except ApiError:
            index = {"name": LIMITS.index_name, "version": None}
        created = int(rt.served.bundle.root.stat().st_mtime)
        return ModelsResponse(
            data=[ModelCard(id=rt.model_id, created=created),
                  ModelCard(id=rt.served.model_name, created=created)],
            slipway_version=__version__, api_version=API_VERSION,
            registered_model=rt.served.model_name, version=rt.served.version, index=index,
            models={"embedder": {**manifest_brief(manifest, "embedder"), **embedder},
                    "generator": {**manifest_brief(manifest, "generator"), **generator}})

    @app.post("/v1/embeddings", response_model=EmbeddingsResponse, responses=_ERRORS,
              tags=["openai"])
    async def embeddings(body: EmbeddingsRequest, request: Request, rt: Rt,
                         who: Annotated[Principal, Depends(guard(Scope.EMBED))]
                         ) -> EmbeddingsResponse:
        """OpenAI's embeddings route (float or base64 vectors)."""
        texts = [body.input] if isinstance(body.input, str) else list(body.input)
        tokens = await run_in_threadpool(rt.embed_tokens, texts)
        await charge_tokens(request, rt, who, tokens)
        vectors = await embed_texts(rt, texts)
        if body.dimensions is not None and body.dimensions != vectors.shape[1]:
            raise ApiError(400, f"dimensions: this model returns {vectors.shape[1]} dimensions; "
                           "omit `dimensions` or pass that number.", param="dimensions")
        metrics.tokens("/v1/embeddings", tokens)
        data = [{"index": i, "embedding": base64.b64encode(v.astype("<f4").tobytes()).decode()
                 if body.encoding_format == "base64" else v.tolist()}
                for i, v in enumerate(vectors)]
        return EmbeddingsResponse(data=data, model=rt.model_id, usage=_usage(tokens))

    @app.post("/v1/completions", response_model=CompletionResponse, tags=["openai"],
              responses={**_ERRORS, **_SSE})
    async def completions(body: CompletionRequest, request: Request, rt: Rt,
                          who: Annotated[Principal, Depends(guard(Scope.GENERATE))]) -> Any:
        """OpenAI's legacy completions route (raw prompt, no chat template)."""
        prompt = body.prompt if isinstance(body.prompt, str) else body.prompt[0]
        new = body.max_tokens or min(16, LIMITS.max_new_tokens)
        prompt_tokens = await run_in_threadpool(rt.gen_tokens, prompt)
        check_context(rt, prompt_tokens, new, "prompt")
        await charge_tokens(request, rt, who, prompt_tokens + new)
        call = GenRequest(Sampling(new, body.temperature, body.top_p, tuple(body.stops()),
                                   body.seed), prompt=prompt, chat=False)
        return await openai_generation(rt, call, body.stream, "text_completion", False)

    @app.post("/v1/chat/completions", response_model=ChatResponse, tags=["openai"],
              responses={**_ERRORS, **_SSE})
    async def chat_completions(body: ChatRequest, request: Request, rt: Rt,
                               who: Annotated[Principal, Depends(guard(Scope.GENERATE))]) -> Any:
        """OpenAI's chat completions route, streamed with `stream: true`."""
        new = body.max_completion_tokens or body.max_tokens or min(DEFAULT_CHAT_TOKENS,
                                                                    LIMITS.max_new_tokens)
        messages = tuple((m.role if m.role != "developer" else "system", m.text())
                         for m in body.messages)
        prompt_tokens = await run_in_threadpool(
            lambda: sum(rt.gen_tokens(text) + 4 for _, text in messages))
        check_context(rt, prompt_tokens, new, "messages")
        await charge_tokens(request, rt, who, prompt_tokens + new)
        call = GenRequest(Sampling(new, body.temperature, body.top_p, tuple(body.stops()),
                                   body.seed), messages=messages)
        return await openai_generation(rt, call, body.stream, "chat.completion", True)

    @app.api_route("/v1/{rest:path}", include_in_schema=False,
                   methods=["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"])
    async def not_found(request: Request) -> None:
        """JSON 404 (or 405 naming the allowed methods) for the rest of ``/v1``."""
        path = request.url.path
        allowed = sorted({m for r in app.routes if isinstance(r, APIRoute)
                          and r.path_regex.match(path) and r.name != "not_found"
                          for m in r.methods})
        if allowed:
            raise StarletteHTTPException(405, f"{request.method} is not allowed on {path}; use "
                                         f"{', '.join(allowed)}.", headers={"Allow": ", ".join(allowed)})
        raise StarletteHTTPException(404, f"No route {path}; see /docs for the API.")


def _document_text(rt: Runtime, doc_ids: list[str]) -> str:
    opened = rt.index_state().opened
    texts = []
    for doc_id in doc_ids:
        chunks = opened.chunks_of(doc_id)
        if not chunks:
            raise ApiError(404, f"document_ids: no document {doc_id!r} in index "
                           f"{LIMITS.index_name} {opened.version}.", param="document_ids",
                           code="document_not_found")
        texts.append("\n".join(chunks))
    return "\n\n".join(texts)


async def run_search(rt: Runtime, query: str, top_k: int, filters: dict[str, Any] | None,
                     rerank: bool, graph: bool) -> SearchResponse:
    """Search the published index (cached per index and model version)."""
    state = rt.index_state()
    payload = {"q": query, "k": top_k, "f": filters, "r": rerank and rt.can_rerank, "g": graph}
    key, value = rt.cached("search", rt.versions(state), payload)
    if value is not None:
        return SearchResponse.model_validate(value)
    searcher = rt.searcher(state, rerank, graph)

    async def embed(queries: list[str]) -> np.ndarray:
        return await embed_texts(rt, queries)

    hits = (await bounded(searcher.search_async([query], top_k, filters, embed=embed),
                          rt.serve.search_timeout_s, "search", "search"))[0]
    results = state.opened.hydrate(hits)
    response = SearchResponse(index_version=state.opened.version, model=rt.model_id,
                              reranked=searcher.reranker is not None, graph_expanded=graph,
                              results=results)
    rt.remember(key, response.model_dump())
    return response


async def run_answer(rt: Runtime, request: Request, who: Principal,
                     body: AnswerRequest) -> AnswerResponse:
    """Retrieve, re-rank, build the prompt, generate; traced to MLflow when sampled."""
    if not rt.sample_trace():
        return await _answer(rt, request, who, body)
    import mlflow

    with mlflow.start_span(name="answer", span_type="CHAIN") as root:
        root.set_inputs(body.model_dump())
        root.set_attribute("request_id", getattr(request.state, "request_id", "-"))
        out = await _answer(rt, request, who, body)
        root.set_outputs({"answer": out.answer, "citations": [c.id for c in out.citations]})
        return out


async def _answer(rt: Runtime, request: Request, who: Principal,
                  body: AnswerRequest) -> AnswerResponse:
    try:
        budget = rag.prompt_budget(LIMITS.context_tokens, rt.model_context, body.max_new_tokens)
    except ValueError as exc:
        raise ApiError(400, f"max_new_tokens: {exc}", param="max_new_tokens") from exc
    # retrieve once (the re-ranker's candidates when there is one), then re-rank those hits:
    # the same result as a re-ranked search, with each stage in its own span
    rerank_top = FusionConfig().rerank_top
    candidates = max(body.top_k, rerank_top) if rt.can_rerank else body.top_k
    with rt.span("retrieve", top_k=candidates, graph=body.graph) as span:
        found = await run_search(rt, body.question, candidates, body.filters, False, body.graph)
        if span is not None:
            span.set_outputs([h.id for h in found.results])
    hits = found.results
    with rt.span("rerank", reranker=rt.can_rerank) as span:
        if rt.reranker is not None and hits:
            hits = await bounded(run_in_threadpool(rerank_hits, rt.reranker, body.question,
                                                   hits, rerank_top),
                                 rt.serve.search_timeout_s, "search", "re-ranker")
        hits = hits[:body.top_k]
        if span is not None:
            span.set_outputs([h.id for h in hits])
    with rt.span("prompt", budget=budget) as span:
        sources = [rag.Source(h.id, h.doc_id, h.title, h.text, h.score) for h in hits]
        try:
            prompt, used = await run_in_threadpool(rag.answer_prompt, rt.gen_tokenizer,
                                                   body.question, sources, budget)
        except ValueError as exc:  # the question leaves no room for sources
            raise ApiError(400, f"question: {exc} The prompt budget is {budget} tokens "
                           f"(less max_new_tokens={body.max_new_tokens}).", param="question",
                           code="context_length_exceeded") from exc
        prompt_tokens = await run_in_threadpool(rt.gen_tokens, prompt)
        if span is not None:
            span.set_attributes({"sources": len(used), "prompt_tokens": prompt_tokens})
    await charge_tokens(request, rt, who, prompt_tokens + body.max_new_tokens)
    call = GenRequest(Sampling(max_new_tokens=body.max_new_tokens, temperature=body.temperature,
                               seed=body.seed), prompt=prompt)
    with rt.span("generate", max_new_tokens=body.max_new_tokens) as span:
        out = await generate_text(rt, call)
        if span is not None:
            span.set_attributes({"prompt_tokens": out["prompt_tokens"],
                                 "completion_tokens": out["completion_tokens"]})
            span.set_outputs(out["text"])
    metrics.tokens("/v1/answer", out["prompt_tokens"], out["completion_tokens"])
    return AnswerResponse(
        model=rt.model_id, index_version=found.index_version, answer=out["text"].strip(),
        finish_reason=out["finish_reason"],
        citations=[Citation(n=i + 1, id=s.id, doc_id=s.doc_id, title=s.title, score=s.score)
                   for i, s in enumerate(used)],
        usage=_usage(out["prompt_tokens"], out["completion_tokens"]))


def rerank_hits(reranker: Reranker, query: str, hits: list[ChunkHit],
                top_n: int) -> list[ChunkHit]:
    """``hits`` with the first ``top_n`` re-ordered (and re-scored) by the re-ranker."""
    by_id = {h.id: h for h in hits}
    order = rerank(reranker, query, [(h.id, h.score) for h in hits],
                   [indexed_text(h.title, h.text) for h in hits[:top_n]], top_n)
    return [by_id[chunk_id].model_copy(update={"score": score}) for chunk_id, score in order]


def entity_lookup(rt: Runtime, name: str, limit: int) -> EntitiesResponse:
    """Entities matching ``name`` with their neighbours; 404 when there is none."""
    queries = rt.graph()
    rows = queries.find(name)[:5]
    if not rows:
        raise ApiError(404, f"No entity named {name!r} in the knowledge graph.", param="name",
                       code="entity_not_found")
    entities = [EntityOut(id=r.id, name=r.name, type=r.type, mentions=r.mentions,
                          aliases=list(r.aliases),
                          neighbours=[Neighbour(id=n.entity.id, name=n.entity.name,
                                                type=n.entity.type, weight=float(n.weight))
                                      for n in queries.neighbours(r.id, limit)])
                for r in rows]
    return EntitiesResponse(query=name, entities=entities)


async def openai_generation(rt: Runtime, call: GenRequest, stream: bool, kind: str,
                            chat: bool) -> Any:
    """A completion or chat completion, whole or as OpenAI's server-sent chunks."""
    ident = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
    created = int(time.time())
    route = "/v1/chat/completions" if chat else "/v1/completions"
    if not stream:
        out = await generate_text(rt, call)
        metrics.tokens(route, out["prompt_tokens"], out["completion_tokens"])
        usage = _usage(out["prompt_tokens"], out["completion_tokens"])
        if chat:
            return ChatResponse(id=ident, created=created, model=rt.model_id, usage=usage,
                                choices=[{"index": 0, "message": {"content": out["text"]},
                                          "finish_reason": out["finish_reason"]}])
        return CompletionResponse(id=ident, created=created, model=rt.model_id, usage=usage,
                                  choices=[{"index": 0, "text": out["text"],
                                            "finish_reason": out["finish_reason"]}])
    chunk_kind = "chat.completion.chunk" if chat else kind

    def chunk(piece: dict[str, Any], finish: str | None) -> dict[str, Any]:
        choice = ({"index": 0, "delta": piece, "finish_reason": finish, "logprobs": None} if chat
                  else {"index": 0, "text": piece.get("content", ""), "finish_reason": finish,
                        "logprobs": None})
        return {"id": ident, "object": chunk_kind, "created": created, "model": rt.model_id,
                "choices": [choice]}

    async def events() -> AsyncIterator[bytes]:
        if chat:
            yield _sse(chunk({"role": "assistant", "content": ""}, None))
        async for event in generation_events(rt, call):
            if "text" in event:
                yield _sse(chunk({"content": event["text"]}, None))
            else:
                metrics.tokens(route, event["prompt_tokens"], event["completion_tokens"])
                final = chunk({}, event["finish_reason"])
                final["usage"] = _usage(event["prompt_tokens"],
                                        event["completion_tokens"]).model_dump()
                yield _sse(final)
        yield _sse("[DONE]")

    return StreamingResponse(events(), media_type="text/event-stream")
