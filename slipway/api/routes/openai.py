"""OpenAI-compatible routes: models, embeddings, completions and chat completions (streamed as
OpenAI's server-sent chunks)."""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse

from slipway import __version__
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
    ModelCard,
    ModelsResponse,
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

router = APIRouter(tags=["openai"])
DEFAULT_CHAT_TOKENS = 256
DEFAULT_COMPLETION_TOKENS = 16
MESSAGE_OVERHEAD_TOKENS = 4  # role and separators of a chat message


@router.get("/v1/models", response_model=ModelsResponse, responses=ERRORS)
async def models(res: Res, _: Annotated[Principal, Depends(guard())]) -> ModelsResponse:
    """Served model versions, precisions and providers, and the index version (also in
    OpenAI's list shape)."""
    manifest = res.served.bundle.manifest
    embedder, generator = await res.embedder.describe(), await res.generator.describe()
    name = res.serve.index_name
    try:
        opened = res.index_state().opened
        index = {
            "name": name,
            "version": opened.version,
            "documents": len(opened.manifest.documents),
            "chunks": opened.chunk_count,
        }
    except ApiError:
        index = {"name": name, "version": None}
    created = int(res.served.bundle.root.stat().st_mtime)
    return ModelsResponse(
        data=[
            ModelCard(id=res.model_id, created=created),
            ModelCard(id=res.served.model_name, created=created),
        ],
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


@router.get("/v1/models/{model}", response_model=ModelCard, responses=ERRORS)
async def model(model: str, res: Res, _: Annotated[Principal, Depends(guard())]) -> ModelCard:
    """One served model (OpenAI's ``models.retrieve``); 404 ``model_not_found`` otherwise."""
    check_model(res, model)
    return ModelCard(id=model, created=int(res.served.bundle.root.stat().st_mtime))


@router.post("/v1/embeddings", response_model=EmbeddingsResponse, responses=ERRORS)
async def embeddings(
    body: EmbeddingsRequest,
    request: Request,
    res: Res,
    who: Annotated[Principal, Depends(guard(Scope.EMBED))],
) -> EmbeddingsResponse:
    """OpenAI's embeddings route (float or base64 vectors)."""
    check_model(res, body.model)
    texts = [body.input] if isinstance(body.input, str) else list(body.input)
    tokens = await embed_tokens(res, texts)
    await charger(request, res, who)(tokens)
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
    """OpenAI's legacy completions route (raw prompt, no chat template)."""
    check_model(res, body.model)
    prompt = body.prompt if isinstance(body.prompt, str) else body.prompt[0]
    new = body.max_tokens or min(DEFAULT_COMPLETION_TOKENS, res.serve.max_new_tokens)
    prompt_tokens = await gen_tokens(res, prompt)
    check_context(res, prompt_tokens, new, "prompt")
    await charger(request, res, who)(prompt_tokens + new)
    call = GenRequest(
        Sampling(new, body.temperature, body.top_p, tuple(body.stops()), body.seed),
        prompt=prompt,
        chat=False,
    )
    return await openai_generation(res, call, body.stream, chat=False)


@router.post("/v1/chat/completions", response_model=ChatResponse, responses=STREAMED)
async def chat_completions(
    body: ChatRequest,
    request: Request,
    res: Res,
    who: Annotated[Principal, Depends(guard(Scope.GENERATE))],
) -> Any:
    """OpenAI's chat completions route, streamed with `stream: true`; `response_format` and
    `tools` constrain the decoder (JSON, JSON schema, function calls)."""
    check_model(res, body.model)
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
    await charger(request, res, who)(prompt_tokens + new)
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
    return await openai_generation(res, call, body.stream, chat=True, tools=tools)


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
    res: Resources, call: GenRequest, stream: bool, chat: bool, tools: list[ToolSpec] | None = None
) -> Any:
    """A completion or chat completion, whole or as OpenAI's server-sent chunks; with
    ``tools``, a guided output that is a call comes back as ``tool_calls``."""
    ident = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
    created = int(time.time())
    route = "/v1/chat/completions" if chat else "/v1/completions"
    # a tool call is known once the whole output is; a constrained output is generated whole
    # so that a schema the decoder rejects is a 400, not a broken stream
    if not stream or tools or call.sampling.guidance is not None:
        out = await generate_text(res, call)
        metrics.tokens(route, out["prompt_tokens"], out["completion_tokens"])
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
        if chat:
            yield sse(chunk({"role": "assistant", "content": ""}, None))
        async for event in pieces:
            if "text" in event:
                yield sse(chunk({"content": event["text"]}, None))
            else:
                metrics.tokens(route, event["prompt_tokens"], event["completion_tokens"])
                final = chunk({}, event["finish_reason"])
                final["usage"] = usage(
                    event["prompt_tokens"], event["completion_tokens"]
                ).model_dump()
                yield sse(final)
        yield sse("[DONE]")

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
