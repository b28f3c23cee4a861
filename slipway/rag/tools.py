"""Re-ranking and tokenizing as services of their own: ``/v1/rerank`` scores documents (texts,
or chunks of the served index the caller may read) with the bundle's cross-encoder;
``/v1/tokenize`` counts and lists tokens under a served model's tokenizer."""

from __future__ import annotations

import asyncio
import uuid

from slipway.access import Reader
from slipway.api.errors import ApiError
from slipway.api.schemas import (
    RerankDocument,
    RerankRequest,
    RerankResponse,
    RerankResult,
    Tokenized,
    TokenizeRequest,
    TokenizeResponse,
    usage,
)
from slipway.deadlines import bounded
from slipway.resources import Resources


def chunk_texts(res: Resources, ids: list[str], reader: Reader) -> list[str]:
    """The indexed texts of chunks ``reader`` may read; 404 naming the first that is unknown
    or restricted (the same answer: a restricted chunk's existence is not told)."""
    opened = res.index_state().opened
    for n, chunk_id in enumerate(ids):
        if not opened.chunk_readable(chunk_id, reader):
            raise ApiError(
                404,
                f"ids[{n}]: no chunk {chunk_id!r} in index {res.serve.index_name} "
                f"{opened.version}.",
                param=f"ids[{n}]",
                code="chunk_not_found",
            )
    return [opened.text_of(chunk_id) for chunk_id in ids]


async def rerank(body: RerankRequest, res: Resources, reader: Reader) -> RerankResponse:
    """``body``'s documents scored against its query, best first (the first ``top_n``)."""
    reranker = res.reranker
    if reranker is None:
        raise ApiError(
            404,
            f"{res.model_id} has no re-ranker: serve a bundle built with one (the retrain "
            "pipeline's `reranker: {enabled: true}`) or set SLIPWAY_RERANKER_PATH.",
            param="model",
            code="model_not_found",
        )
    texts = chunk_texts(res, body.ids, reader) if body.ids is not None else body.texts()
    scores = await bounded(
        asyncio.to_thread(reranker.score, body.query, texts),
        res.serve.search_timeout_s,
        "search",
        "re-ranker",
    )
    order = sorted(range(len(texts)), key=lambda i: -scores[i])[: body.top_n or len(texts)]
    tokens = await asyncio.to_thread(
        res.embed_tokens, [f"{body.query} {text}" for text in texts]
    )  # the pairs the cross-encoder reads, counted with the embedder's tokenizer
    return RerankResponse(
        id=f"rerank-{uuid.uuid4().hex[:24]}",
        model=res.model_id,
        results=[
            RerankResult(
                index=i,
                relevance_score=float(scores[i]),
                id=body.ids[i] if body.ids is not None else None,
                document=RerankDocument(text=texts[i]) if body.return_documents else None,
            )
            for i in order
        ],
        usage=usage(tokens),
    )


def tokenize(body: TokenizeRequest, res: Resources) -> TokenizeResponse:
    """Token ids (and optionally their strings) of each input, and their counts."""
    inputs = [body.input] if isinstance(body.input, str) else list(body.input)
    generation = body.kind == "generation"
    tokenizer = res.gen_tokenizer if generation else res.embed_tokenizer
    encodings = tokenizer.encode_batch(inputs, add_special_tokens=body.add_special_tokens)
    results = [
        Tokenized(
            count=len(e.ids),
            tokens=list(e.ids),
            token_strs=list(e.tokens) if body.return_token_strs else None,
        )
        for e in encodings
    ]
    window = res.model_context if generation else res.embed_window
    return TokenizeResponse(
        model=res.model_id,
        kind=body.kind,
        max_model_len=window or None,
        count=sum(r.count for r in results),
        results=results,
    )
