"""OpenAI-compatible routes: models, embeddings, completions and chat completions (streamed as
OpenAI's server-sent chunks)."""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse

from slipway import __version__
from slipway.api import metrics
from slipway.api.auth import Principal
from slipway.api.deps import ERRORS, STREAMED, Res, charger, check_context, guard, sse
from slipway.api.errors import ApiError
from slipway.api.keys import Scope
from slipway.api.middleware import API_VERSION
from slipway.api.schemas import (
    ChatChoice,
    ChatRequest,
    ChatResponse,
    CompletionChoice,
    CompletionRequest,
    CompletionResponse,
    EmbeddingItem,
    EmbeddingsRequest,
    EmbeddingsResponse,
    ModelCard,
    ModelsResponse,
    usage,
)
from slipway.generation import Request as GenRequest
from slipway.generation import Sampling
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
    )


@router.post("/v1/embeddings", response_model=EmbeddingsResponse, responses=ERRORS)
async def embeddings(
    body: EmbeddingsRequest,
    request: Request,
    res: Res,
    who: Annotated[Principal, Depends(guard(Scope.EMBED))],
) -> EmbeddingsResponse:
    """OpenAI's embeddings route (float or base64 vectors)."""
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
    """OpenAI's chat completions route, streamed with `stream: true`."""
    new = (
        body.max_completion_tokens
        or body.max_tokens
        or min(DEFAULT_CHAT_TOKENS, res.serve.max_new_tokens)
    )
    messages = tuple(
        (m.role if m.role != "developer" else "system", m.text()) for m in body.messages
    )
    prompt_tokens = await gen_tokens(
        res, *(text for _, text in messages), per_text=MESSAGE_OVERHEAD_TOKENS
    )
    check_context(res, prompt_tokens, new, "messages")
    await charger(request, res, who)(prompt_tokens + new)
    call = GenRequest(
        Sampling(new, body.temperature, body.top_p, tuple(body.stops()), body.seed),
        messages=messages,
    )
    return await openai_generation(res, call, body.stream, chat=True)


async def openai_generation(res: Resources, call: GenRequest, stream: bool, chat: bool) -> Any:
    """A completion or chat completion, whole or as OpenAI's server-sent chunks."""
    ident = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
    created = int(time.time())
    route = "/v1/chat/completions" if chat else "/v1/completions"
    if not stream:
        out = await generate_text(res, call)
        metrics.tokens(route, out["prompt_tokens"], out["completion_tokens"])
        used = usage(out["prompt_tokens"], out["completion_tokens"])
        if chat:
            return ChatResponse(
                id=ident,
                created=created,
                model=res.model_id,
                usage=used,
                choices=[
                    ChatChoice.model_validate(
                        {
                            "index": 0,
                            "message": {"content": out["text"]},
                            "finish_reason": out["finish_reason"],
                        }
                    )
                ],
            )
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

    async def events() -> AsyncIterator[bytes]:
        if chat:
            yield sse(chunk({"role": "assistant", "content": ""}, None))
        async for event in generation_events(res, call):
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
