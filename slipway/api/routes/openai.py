"""OpenAI-compatible routes: models, embeddings, completions and chat completions (streamed as
OpenAI's server-sent chunks)."""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from slipway import __version__
from slipway.api import metrics
from slipway.api.auth import Principal
from slipway.api.deps import (
    ERRORS,
    STREAMED,
    Res,
    charger,
    check_context,
    experiment_unit,
    guard,
    sse,
)
from slipway.api.errors import ApiError
from slipway.api.keys import Scope
from slipway.api.middleware import API_VERSION
from slipway.api.schemas import (
    AssistantMessage,
    ChatChoice,
    ChatRequest,
    ChatResponse,
    CompletionChoice,
    CompletionRequest,
    CompletionResponse,
    EmbeddingItem,
    EmbeddingsRequest,
    EmbeddingsResponse,
    FunctionCall,
    RoutedModel,
    RoutedModelsResponse,
    ToolCall,
    ToolChoiceFunction,
    usage,
)
from slipway.generation import Request as GenRequest
from slipway.generation import Sampling
from slipway.generation.constraints import (
    Guidance,
    ToolSpec,
    format_prompt,
    json_guidance,
    parse_tool_call,
    tools_guidance,
    tools_prompt,
)
from slipway.rag.inference import (
    embed_texts,
    embed_tokens,
    gen_tokens,
    generate_text,
    generation_events,
)
from slipway.resources import Resources, manifest_brief
from slipway.routing.accounting import Meter, budgeted, reserve
from slipway.routing.models import ModelSpec
from slipway.routing.router import Routed, relay
from slipway.routing.upstream import UpstreamError, dumps

router = APIRouter(tags=["openai"])
DEFAULT_CHAT_TOKENS = 256
DEFAULT_COMPLETION_TOKENS = 16
MESSAGE_OVERHEAD_TOKENS = 4  # role and separators of a chat message


@router.get("/v1/models", response_model=RoutedModelsResponse, responses=ERRORS)
async def models(res: Res, who: Annotated[Principal, Depends(guard())]) -> RoutedModelsResponse:
    """The models the caller may name (the served bundle, its aliases, upstreams), the served
    model versions, precisions and providers, and the index version with the index gate's
    graph retrieval decision (OpenAI's list shape)."""
    manifest = res.served.bundle.manifest
    embedder, generator = await res.embedder.describe(), await res.generator.describe()
    name = res.serve.index_name
    try:
        state = res.index_state()
        opened = state.opened
        gate = opened.manifest.graph
        index = {
            "name": name,
            "version": opened.version,
            "documents": len(opened.manifest.documents),
            "chunks": opened.chunk_count,
            "graph_retrieval": state.graph_default,
            "graph_snapshot": state.has_graph,
            "graph_gate": gate.model_dump() if gate is not None else None,
        }
    except ApiError:
        index = {"name": name, "version": None}
    return RoutedModelsResponse(
        data=[model_card(res, spec) for spec in res.router.visible(who)],
        slipway_version=__version__,
        api_version=API_VERSION,
        registered_model=res.served.model_name,
        version=res.served.version,
        index=index,
        models={
            "embedder": {**manifest_brief(manifest, "embedder"), **embedder},
            "generator": {**manifest_brief(manifest, "generator"), **generator},
        },
        prompts=res.prompts.versions(),
    )


@router.get("/v1/models/{model}", response_model=RoutedModel, responses=ERRORS)
async def model(model: str, res: Res, who: Annotated[Principal, Depends(guard())]) -> RoutedModel:
    """One model (OpenAI's ``models.retrieve``); 404 ``model_not_found`` when there is none,
    403 ``model_not_allowed`` when the caller may not call it."""
    return model_card(res, res.router.resolve(model, who))


def model_card(res: Resources, spec: ModelSpec) -> RoutedModel:
    """The card of one routed model."""
    return RoutedModel(
        id=spec.id,
        created=int(res.served.bundle.root.stat().st_mtime),
        owned_by="slipway" if spec.local else "upstream",
        context_window=spec.context_window or (res.model_context if spec.local else None),
        price_in=spec.price_in,
        price_out=spec.price_out,
        fallbacks=spec.fallbacks,
    )


@router.post("/v1/embeddings", response_model=EmbeddingsResponse, responses=ERRORS)
async def embeddings(
    body: EmbeddingsRequest,
    request: Request,
    res: Res,
    who: Annotated[Principal, Depends(guard(Scope.EMBED))],
) -> Any:
    """OpenAI's embeddings route (float or base64 vectors), routed by ``model``."""
    spec = res.router.resolve(body.model, who)
    texts = [body.input] if isinstance(body.input, str) else list(body.input)
    tokens = await embed_tokens(res, texts) if spec.local or counted(who) else 0
    await charger(request, res, who)(tokens)
    meter = await reserve(res.usage_store, res.usage, who, spec, tokens, 0)

    async def attempt(option: ModelSpec) -> Any:
        if option.local:
            reply = await local_embeddings(res, body, texts)
            meter.settle(option, reply.usage.prompt_tokens, 0)
            return reply
        return await upstream_json(res, request, option, "/embeddings", meter)

    return shaped(await routed(res, spec, attempt, who, meter))


async def local_embeddings(
    res: Resources, body: EmbeddingsRequest, texts: list[str]
) -> EmbeddingsResponse:
    """Embeddings from the served bundle."""
    tokens = await embed_tokens(res, texts)
    vectors = await embed_texts(res, texts)
    if body.dimensions is not None and body.dimensions != vectors.shape[1]:
        raise ApiError(
            400,
            f"dimensions: this model returns {vectors.shape[1]} dimensions; "
            "omit `dimensions` or pass that number.",
            param="dimensions",
        )
    metrics.tokens("/v1/embeddings", tokens)
    data = [
        EmbeddingItem(
            index=i,
            embedding=base64.b64encode(v.astype("<f4").tobytes()).decode()
            if body.encoding_format == "base64"
            else v.tolist(),
        )
        for i, v in enumerate(vectors)
    ]
    return EmbeddingsResponse(data=data, model=res.model_id, usage=usage(tokens))


@router.post("/v1/completions", response_model=CompletionResponse, responses=STREAMED)
async def completions(
    body: CompletionRequest,
    request: Request,
    res: Res,
    who: Annotated[Principal, Depends(guard(Scope.GENERATE))],
) -> Any:
    """OpenAI's legacy completions route (raw prompt, no chat template), routed by ``model``."""
    spec = res.router.resolve(body.model, who)
    prompt = body.prompt if isinstance(body.prompt, str) else body.prompt[0]
    local_new = body.max_tokens or min(DEFAULT_COMPLETION_TOKENS, res.serve.max_new_tokens)
    new = local_new if spec.local else body.max_tokens or upstream_new_tokens(spec)
    prompt_tokens = await gen_tokens(res, prompt) if spec.local or counted(who) else 0
    if spec.local:
        check_context(res, prompt_tokens, new, "prompt")
    await charger(request, res, who)(prompt_tokens + new if prompt_tokens else 0)
    meter = await reserve(res.usage_store, res.usage, who, spec, prompt_tokens, new)

    async def attempt(option: ModelSpec) -> Any:
        if option.local:
            if option is not spec:  # a fallback: checked as the served model
                check_context(res, await gen_tokens(res, prompt), local_new, "prompt")
            call = GenRequest(
                Sampling(local_new, body.temperature, body.top_p, tuple(body.stops()), body.seed),
                prompt=prompt,
                chat=False,
            )
            return await openai_generation(
                res, call, body.stream, chat=False, meter=meter, spec=option
            )
        return await upstream_call(res, request, option, "/completions", body.stream, meter)

    return shaped(await routed(res, spec, attempt, who, meter))


@router.post("/v1/chat/completions", response_model=ChatResponse, responses=STREAMED)
async def chat_completions(
    body: ChatRequest,
    request: Request,
    res: Res,
    who: Annotated[Principal, Depends(guard(Scope.GENERATE))],
) -> Any:
    """OpenAI's chat completions route, streamed with `stream: true`; `response_format` and
    `tools` constrain the decoder (JSON, JSON schema, function calls); routed by ``model``."""
    spec = res.router.resolve(body.model, who)
    prepared = await local_chat(res, body, request, who) if spec.local else None
    if prepared is not None:
        prompt_tokens, new = prepared.prompt_tokens, prepared.call.sampling.max_new_tokens
    else:
        new = body.max_completion_tokens or body.max_tokens or upstream_new_tokens(spec)
        prompt_tokens = (
            await gen_tokens(
                res, *(m.text() for m in body.messages), per_text=MESSAGE_OVERHEAD_TOKENS
            )
            if counted(who)
            else 0
        )
    await charger(request, res, who)(prompt_tokens + new if prompt_tokens else 0)
    meter = await reserve(res.usage_store, res.usage, who, spec, prompt_tokens, new)

    async def attempt(option: ModelSpec) -> Any:
        if option.local:
            ready = prepared or await local_chat(res, body, request, who)
            return await openai_generation(
                res,
                ready.call,
                body.stream,
                chat=True,
                tools=ready.tools,
                meter=meter,
                spec=option,
            )
        return await upstream_call(res, request, option, "/chat/completions", body.stream, meter)

    return shaped(await routed(res, spec, attempt, who, meter))


@dataclass(frozen=True)
class LocalChat:
    """A chat request prepared for the served generator."""

    call: GenRequest
    tools: list[ToolSpec]
    prompt_tokens: int


async def local_chat(
    res: Resources, body: ChatRequest, request: Request, who: Principal
) -> LocalChat:
    """The served generator's call for a chat request: its system prompt, constraints and
    prompt tokens (a 400 when they do not fit the context)."""
    new = (
        body.max_completion_tokens
        or body.max_tokens
        or min(DEFAULT_CHAT_TOKENS, res.serve.max_new_tokens)
    )
    tools, guidance, instructions = await constrained(res, body)
    messages = tuple(
        (ROLES.get(m.role, m.role), m.text() if m.role != "tool" else f"Result: {m.text()}")
        for m in body.messages
    )
    if not any(role == "system" for role, _ in messages):
        system = res.prompts.pick("chat_system", experiment_unit(request, who)).format()
        messages = (("system", system), *messages) if system.strip() else messages
    if instructions:
        messages = (("system", instructions), *messages)
    prompt_tokens = await gen_tokens(
        res, *(text for _, text in messages), per_text=MESSAGE_OVERHEAD_TOKENS
    )
    check_context(res, prompt_tokens, new, "messages")
    call = GenRequest(
        Sampling(
            new,
            body.temperature,
            body.top_p,
            tuple(body.stops()),
            body.seed,
            guidance=guidance,
        ),
        messages=messages,
    )
    return LocalChat(call, tools, prompt_tokens)


# --- routing ---------------------------------------------------------------------------------

# New tokens an upstream call that sets no maximum is estimated to use (for its budget).
UPSTREAM_NEW_TOKENS = 512


def upstream_new_tokens(spec: ModelSpec) -> int:
    """The estimate of an upstream call's new tokens when the request sets no maximum."""
    return min(UPSTREAM_NEW_TOKENS, spec.context_window or UPSTREAM_NEW_TOKENS)


def counted(who: Principal) -> bool:
    """Whether an upstream call's prompt must be counted here: for the caller's budget or its
    tokens per minute (else the upstream's usage is all that is needed)."""
    return budgeted(who) or bool(who.limits.tokens_per_minute)


async def routed(
    res: Resources,
    spec: ModelSpec,
    attempt: Callable[[ModelSpec], Awaitable[Any]],
    who: Principal,
    meter: Meter,
) -> Routed:
    """``attempt`` along ``spec``'s fallback chain; the reservation is released when no
    model answers."""
    try:
        return await res.router.call(spec, attempt, who)
    except ApiError:
        meter.release()
        raise


def shaped(answer: Routed) -> Any:
    """The reply of a routed call, with ``X-Slipway-Model`` and ``X-Slipway-Fallbacks``."""
    result = answer.result
    if isinstance(result, bytes):
        return Response(result, media_type="application/json", headers=answer.headers())
    if isinstance(result, StreamingResponse):
        result.headers.update(answer.headers())
        return result
    return JSONResponse(result.model_dump(mode="json"), headers=answer.headers())


async def upstream_body(request: Request, spec: ModelSpec, stream: bool) -> dict[str, Any]:
    """The client's request as it sent it, for ``spec``'s upstream: its model id, and a
    stream that reports usage."""
    body = dict(await request.json())  # parsed once already: Starlette keeps it
    body["model"] = spec.upstream_model
    if stream:
        body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
    return body


async def upstream_json(
    res: Resources, request: Request, spec: ModelSpec, path: str, meter: Meter
) -> bytes:
    """An upstream's whole reply, naming ``spec``; its usage recorded."""
    reply = await res.router.upstream.post(spec, path, await upstream_body(request, spec, False))
    if not isinstance(reply, dict):
        raise UpstreamError(502, "the reply is not a JSON object", True)
    reply["model"] = spec.id
    used = reply.get("usage")
    used = used if isinstance(used, dict) else {}
    meter.settle(spec, int(used.get("prompt_tokens") or 0), int(used.get("completion_tokens") or 0))
    return await dumps(reply)


async def upstream_call(
    res: Resources, request: Request, spec: ModelSpec, path: str, stream: bool, meter: Meter
) -> Any:
    """An upstream's completion, whole or streamed through as its events come."""
    if not stream:
        return await upstream_json(res, request, spec, path, meter)
    raw = await request.json()
    wants_usage = bool((raw.get("stream_options") or {}).get("include_usage"))
    opened = await res.router.upstream.open_stream(
        spec, path, await upstream_body(request, spec, True)
    )

    def done(used: tuple[int, int] | None, pieces: int, broken: bool) -> None:
        if broken:
            res.router.cooldowns.failed(spec)
        prompt, completion = used or (0, pieces)
        meter.settle(spec, prompt, completion)

    return StreamingResponse(
        relay(opened, spec.id, wants_usage, done), media_type="text/event-stream"
    )


# Roles the chat templates know: a developer message is a system one; a tool's result is
# read by the model as a user turn ("Result: ...").
ROLES = {"developer": "system", "tool": "user"}


async def constrained(
    res: Resources, body: ChatRequest
) -> tuple[list[ToolSpec], Guidance | None, str]:
    """The tools the model may call, the decoder's guidance and the instructions that go
    with them, from ``tools``/``tool_choice`` or ``response_format``."""
    tools = [
        ToolSpec(t.function.name, t.function.parameters, t.function.description or "")
        for t in body.tools or []
    ]
    choice = body.tool_choice
    name = choice.function.name if isinstance(choice, ToolChoiceFunction) else (choice or "auto")
    guidance = tools_guidance(tools, name) if tools else None
    instructions = tools_prompt(tools) if guidance is not None else ""
    param = "tools"
    if guidance is None:
        tools = []
        fmt = body.response_format
        if fmt is not None and fmt.type != "text":
            schema = fmt.json_schema.schema_ if fmt.json_schema is not None else None
            guidance, instructions, param = (
                json_guidance(schema),
                format_prompt(schema),
                ("response_format"),
            )
    if guidance is not None and not (await res.generator_info()).get("guided"):
        raise ApiError(
            400,
            f"{param}: this model's runtime cannot constrain its output (build the generator "
            "with runtime: genai).",
            param=param,
            code="unsupported_parameter",
        )
    return tools, guidance, instructions


async def openai_generation(
    res: Resources,
    call: GenRequest,
    stream: bool,
    chat: bool,
    tools: list[ToolSpec] | None = None,
    meter: Meter | None = None,
    spec: ModelSpec | None = None,
) -> Any:
    """A completion or chat completion of the served generator, whole or as OpenAI's
    server-sent chunks; with ``tools``, a guided output that is a call comes back as
    ``tool_calls``; its usage goes to ``meter`` (at ``spec``'s prices)."""
    served = spec or res.router.default

    def settle(prompt: int, completion: int) -> None:
        if meter is not None:
            meter.settle(served, prompt, completion)

    ident = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
    created = int(time.time())
    route = "/v1/chat/completions" if chat else "/v1/completions"
    # a tool call is known once the whole output is; a constrained output is generated whole
    # so that a schema the decoder rejects is a 400, not a broken stream
    if not stream or tools or call.sampling.guidance is not None:
        out = await generate_text(res, call)
        metrics.tokens(route, out["prompt_tokens"], out["completion_tokens"])
        settle(out["prompt_tokens"], out["completion_tokens"])
        used = usage(out["prompt_tokens"], out["completion_tokens"])
        if not chat:
            return CompletionResponse(
                id=ident,
                created=created,
                model=res.model_id,
                usage=used,
                choices=[
                    CompletionChoice.model_validate(
                        {"index": 0, "text": out["text"], "finish_reason": out["finish_reason"]}
                    )
                ],
            )
        message, finish = chat_message(ident, out, tools or [])
        if stream:
            return StreamingResponse(
                one_chunk_stream(ident, created, res.model_id, message, finish, used),
                media_type="text/event-stream",
            )
        return ChatResponse(
            id=ident,
            created=created,
            model=res.model_id,
            usage=used,
            choices=[ChatChoice(index=0, message=message, finish_reason=finish)],
        )
    chunk_kind = "chat.completion.chunk" if chat else "text_completion"

    def chunk(piece: dict[str, Any], finish: str | None) -> dict[str, Any]:
        choice = (
            {"index": 0, "delta": piece, "finish_reason": finish, "logprobs": None}
            if chat
            else {
                "index": 0,
                "text": piece.get("content", ""),
                "finish_reason": finish,
                "logprobs": None,
            }
        )
        return {
            "id": ident,
            "object": chunk_kind,
            "created": created,
            "model": res.model_id,
            "choices": [choice],
        }

    pieces = await generation_events(res, call)  # 503/504 here, before the headers

    async def events() -> AsyncIterator[bytes]:
        written, settled = 0, False
        try:
            if chat:
                yield sse(chunk({"role": "assistant", "content": ""}, None))
            async for event in pieces:
                if "text" in event:
                    written += 1
                    yield sse(chunk({"content": event["text"]}, None))
                else:
                    metrics.tokens(route, event["prompt_tokens"], event["completion_tokens"])
                    settle(event["prompt_tokens"], event["completion_tokens"])
                    settled = True
                    final = chunk({}, event["finish_reason"])
                    final["usage"] = usage(
                        event["prompt_tokens"], event["completion_tokens"]
                    ).model_dump()
                    yield sse(final)
            yield sse("[DONE]")
        finally:
            if not settled:  # cut off: what is known of it
                settle(0, written)

    return StreamingResponse(events(), media_type="text/event-stream")


def chat_message(
    ident: str, out: dict[str, Any], tools: list[ToolSpec]
) -> tuple[AssistantMessage, Literal["stop", "length", "tool_calls"]]:
    """The assistant's message of a generation: a tool call when the guided output is one."""
    call = parse_tool_call(out["text"], tools) if tools else None
    if call is None:
        return AssistantMessage(content=out["text"]), out["finish_reason"]
    return (
        AssistantMessage(
            content=None,
            tool_calls=[
                ToolCall(
                    id=f"call_{ident[-16:]}",
                    function=FunctionCall(name=call.name, arguments=call.arguments),
                )
            ],
        ),
        "tool_calls",
    )


async def one_chunk_stream(
    ident: str,
    created: int,
    model: str,
    message: AssistantMessage,
    finish: str,
    used: Any,
) -> AsyncIterator[bytes]:
    """OpenAI's chunks of a finished message: the role, the content or tool calls, the end."""

    def chunk(delta: dict[str, Any], finish_reason: str | None) -> dict[str, Any]:
        choice = {"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}
        return {
            "id": ident,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [choice],
        }

    yield sse(chunk({"role": "assistant", "content": ""}, None))
    if message.tool_calls:
        calls = [{"index": n, **call.model_dump()} for n, call in enumerate(message.tool_calls)]
        yield sse(chunk({"tool_calls": calls}, None))
    elif message.content:
        yield sse(chunk({"content": message.content}, None))
    final = chunk({}, finish)
    final["usage"] = used.model_dump()
    yield sse(final)
    yield sse("[DONE]")
