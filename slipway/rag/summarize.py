"""Summaries of a text or of indexed documents: a text longer than the model's context is
summarized piece by piece, then the pieces' summaries are summarized (map-reduce)."""

from __future__ import annotations

import asyncio

from slipway.access import Reader
from slipway.api import metrics
from slipway.api.errors import ApiError
from slipway.api.schemas import SummarizeRequest, SummarizeResponse, usage
from slipway.generation import Request, Sampling
from slipway.rag import prompts
from slipway.rag.inference import Charge, gen_tokens, generate_text
from slipway.resources import Resources

MAX_ROUNDS = 6  # map, then reduce until one text is left


async def summarize(
    request: SummarizeRequest,
    res: Resources,
    charge: Charge,
    reader: Reader,
    unit: str = "-",
) -> SummarizeResponse:
    """A summary of ``request``'s text or documents (those ``reader`` may read) in about
    ``max_words`` words; ``unit`` picks the summarize prompt's variant when the bundle serves
    several."""
    template = res.prompts.pick("summarize", unit)
    if request.document_ids is not None:
        text = document_text(res, request.document_ids, reader)
    else:
        assert request.text is not None
        text = request.text
    new_tokens = prompts.summary_tokens(request.max_words, res.serve.max_new_tokens)
    tokenizer = res.gen_tokenizer
    try:
        budget = prompts.prompt_budget(res.serve.context_tokens, res.model_context, new_tokens)
        pieces = await asyncio.to_thread(
            prompts.map_pieces, tokenizer, template, text, budget, request.max_words
        )
    except ValueError as exc:
        raise ApiError(400, f"max_words: {exc}", param="max_words") from exc
    await charge(await gen_tokens(res, text) + new_tokens * len(pieces))
    sampling = Sampling(max_new_tokens=new_tokens)
    prompt_total = completion_total = 0
    n_pieces = len(pieces)
    for _ in range(MAX_ROUNDS):
        outs = [
            await generate_text(
                res, Request(sampling, prompts.summary_prompt(template, piece, request.max_words))
            )
            for piece in pieces
        ]
        prompt_total += sum(o["prompt_tokens"] for o in outs)
        completion_total += sum(o["completion_tokens"] for o in outs)
        if len(outs) == 1:
            break
        texts = [o["text"] for o in outs]
        groups = await asyncio.to_thread(
            prompts.reduce_groups, tokenizer, template, texts, budget, request.max_words
        )
        pieces = (
            groups
            if len(groups) < len(outs)
            else [
                "\n".join(prompts.truncate(tokenizer, t, budget // (2 * len(outs))) for t in texts)
            ]
        )
    metrics.tokens("/v1/summarize", prompt_total, completion_total)
    return SummarizeResponse(
        model=res.model_id,
        prompt_version=template.ref,
        summary=outs[0]["text"].strip(),
        document_ids=request.document_ids or [],
        pieces=n_pieces,
        usage=usage(prompt_total, completion_total),
    )


def document_text(res: Resources, doc_ids: list[str], reader: Reader) -> str:
    """The indexed text of documents, in order; 404 naming the first one that is unknown or
    that ``reader`` may not read (the same answer: a restricted document's existence is not
    told)."""
    opened = res.index_state().opened
    texts = []
    for doc_id in doc_ids:
        chunks = opened.chunks_of(doc_id) if opened.readable(doc_id, reader) else []
        if not chunks:
            raise ApiError(
                404,
                f"document_ids: no document {doc_id!r} in index "
                f"{res.serve.index_name} {opened.version}.",
                param="document_ids",
                code="document_not_found",
            )
        texts.append("\n".join(chunks))
    return "\n\n".join(texts)
