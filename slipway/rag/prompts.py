"""Prompts for answers and summaries, built to fit the generator's context budget.

Pure functions over a fast tokenizer (``tokenizers.Tokenizer``): the service and the tests
count the same tokens the generator will see (before its chat template, which the budget's
``reserve`` covers)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from tokenizers import Tokenizer

from slipway.documents.chunking import split_text
from slipway.prompts import Prompt, fill

TEMPLATE_RESERVE = 48  # tokens of chat template and separators around a prompt


@dataclass(frozen=True)
class Source:
    """A retrieved chunk offered to the generator."""

    id: str
    doc_id: str
    title: str
    text: str
    score: float


def count_tokens(tokenizer: Tokenizer, text: str) -> int:
    """Tokens of ``text`` without special tokens."""
    return len(tokenizer.encode(text, add_special_tokens=False).ids)


def truncate(tokenizer: Tokenizer, text: str, max_tokens: int) -> str:
    """The longest prefix of ``text`` with at most ``max_tokens`` tokens."""
    if max_tokens <= 0:
        return ""
    offsets = tokenizer.encode(text, add_special_tokens=False).offsets
    return text if len(offsets) <= max_tokens else text[: offsets[max_tokens - 1][1]]


def prompt_budget(context_tokens: int, model_context: int | None, max_new_tokens: int) -> int:
    """Tokens a prompt may use: the configured budget, capped by the model's context, less the
    answer's tokens and the chat template's reserve."""
    context = min(context_tokens, model_context) if model_context else context_tokens
    budget = context - max_new_tokens - TEMPLATE_RESERVE
    if budget < 64:
        raise ValueError(
            f"max_new_tokens={max_new_tokens} leaves no room for a prompt in a "
            f"{context}-token context; ask for fewer new tokens."
        )
    return budget


def answer_prompt(
    tokenizer: Tokenizer,
    template: Prompt,
    question: str,
    sources: Sequence[Source],
    budget: int,
) -> tuple[str, list[Source]]:
    """The RAG prompt (``template`` with its ``{{sources}}`` and ``{{question}}`` filled) and the
    sources that fit in ``budget`` tokens, best first. A first source longer than the room left
    is cut to fit; later ones that do not fit are dropped."""
    before, after = template.split("sources")
    head, tail = fill(before, question=question), fill(after, question=question)
    room = budget - count_tokens(tokenizer, head) - count_tokens(tokenizer, tail)
    if room <= 0:
        raise ValueError("The question alone exceeds the prompt budget; shorten it.")
    blocks: list[str] = []
    used: list[Source] = []
    for source in sources:
        block = f"[{len(used) + 1}] {source.title}\n{source.text}\n".lstrip()
        cost = count_tokens(tokenizer, block)
        if cost > room:
            if used:
                break
            block = truncate(tokenizer, block, room)
            cost = room
        blocks.append(block)
        used.append(source)
        room -= cost
    return head + "\n".join(blocks) + tail, used


def summary_prompt(template: Prompt, text: str, max_words: int) -> str:
    """The prompt (``template`` filled) that summarizes ``text``."""
    return template.format(words=max_words, text=text)


def summary_tokens(max_words: int, cap: int) -> int:
    """New tokens for a summary of ``max_words`` words (about 1.5 tokens a word), within cap."""
    return max(8, min(cap, int(max_words * 1.5) + 8))


def map_pieces(
    tokenizer: Tokenizer, template: Prompt, text: str, budget: int, max_words: int
) -> list[str]:
    """``text`` as one piece when its summary prompt fits ``budget``, else pieces that each fit
    (cut at whitespace, slightly overlapping): the map step of a map-reduce summary."""
    overhead = count_tokens(tokenizer, summary_prompt(template, "", max_words))
    room = budget - overhead
    if room < 16:
        raise ValueError(
            "The prompt budget is too small to summarize; raise "
            "SLIPWAY_CONTEXT_TOKENS or ask for fewer words."
        )
    if count_tokens(tokenizer, text) <= room:
        return [text]
    return [piece for piece, _ in split_text(text, tokenizer, room, min(32, room // 8))]


def reduce_groups(
    tokenizer: Tokenizer, template: Prompt, partials: Sequence[str], budget: int, max_words: int
) -> list[str]:
    """Partial summaries joined into as few texts as fit ``budget`` each (the reduce step;
    repeat until one remains)."""
    room = budget - count_tokens(tokenizer, summary_prompt(template, "", max_words))
    groups: list[str] = []
    current: list[str] = []
    size = 0
    for part in partials:
        cost = count_tokens(tokenizer, part) + 1
        if current and size + cost > room:
            groups.append("\n".join(current))
            current, size = [], 0
        current.append(truncate(tokenizer, part, room))
        size += min(cost, room)
    if current:
        groups.append("\n".join(current))
    return groups
