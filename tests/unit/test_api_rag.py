"""Tier 1: prompts that fit the context budget, citations, and map-reduce summary pieces."""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer

from slipway.documents.chunking import load_tokenizer
from slipway.models import embedder_source
from slipway.prompts import Prompt, from_sources
from slipway.rag import prompts as rag

SERVED = from_sources()
ANSWER: Prompt = SERVED.pick("answer", "-")
SUMMARY: Prompt = SERVED.pick("summarize", "-")


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return load_tokenizer(embedder_source().path)


def source(i: int, words: int) -> rag.Source:
    return rag.Source(f"d{i}#0", f"d{i}", f"Title {i}", " ".join(["river"] * words), 1.0 / i)


def test_prompt_budget_caps_by_model_context_and_refuses_no_room() -> None:
    assert rag.prompt_budget(2048, 256, 32) == 256 - 32 - rag.TEMPLATE_RESERVE
    assert rag.prompt_budget(1024, None, 100) == 1024 - 100 - rag.TEMPLATE_RESERVE
    with pytest.raises(ValueError, match="fewer new tokens"):
        rag.prompt_budget(256, 256, 200)


def test_answer_prompt_keeps_the_best_sources_that_fit(tok: Tokenizer) -> None:
    sources = [source(i, 40) for i in range(1, 6)]
    prompt, used = rag.answer_prompt(tok, ANSWER, "Which river?", sources, budget=150)
    assert rag.count_tokens(tok, prompt) <= 150
    assert [s.id for s in used] == [s.id for s in sources[: len(used)]] and 1 <= len(used) < 5
    assert "[1] Title 1" in prompt and f"[{len(used) + 1}]" not in prompt
    assert prompt.rstrip().endswith("Question: Which river?\nAnswer:")
    assert prompt.startswith("Answer the question using only the numbered sources")
    everything, all_used = rag.answer_prompt(tok, ANSWER, "Which river?", sources, budget=10_000)
    assert len(all_used) == 5 and "[5] Title 5" in everything


def test_a_first_source_longer_than_the_budget_is_cut_not_dropped(tok: Tokenizer) -> None:
    prompt, used = rag.answer_prompt(tok, ANSWER, "q?", [source(1, 500), source(2, 5)], budget=120)
    assert [s.id for s in used] == ["d1#0"]
    assert rag.count_tokens(tok, prompt) <= 120
    with pytest.raises(ValueError, match="question alone"):
        rag.answer_prompt(tok, ANSWER, "why " * 200, [source(1, 5)], budget=50)


def test_truncate_keeps_whole_tokens(tok: Tokenizer) -> None:
    text = "alpha beta gamma delta"
    assert rag.truncate(tok, text, 2) == "alpha beta"
    assert rag.truncate(tok, text, 100) == text and rag.truncate(tok, text, 0) == ""


def test_map_pieces_split_long_text_and_keep_short_text_whole(tok: Tokenizer) -> None:
    short = "A short text about rivers."
    assert rag.map_pieces(tok, SUMMARY, short, budget=200, max_words=20) == [short]
    long = " ".join(f"word{i}" for i in range(600))
    pieces = rag.map_pieces(tok, SUMMARY, long, budget=200, max_words=20)
    room = 200 - rag.count_tokens(tok, rag.summary_prompt(SUMMARY, "", 20))
    assert len(pieces) > 3 and all(rag.count_tokens(tok, p) <= room for p in pieces)
    assert pieces[0].startswith("word0") and pieces[-1].endswith("word599")
    with pytest.raises(ValueError, match="too small"):
        rag.map_pieces(tok, SUMMARY, long, budget=20, max_words=20)


def test_reduce_groups_join_partials_into_fewer_texts(tok: Tokenizer) -> None:
    partials = [f"summary number {i} of a piece" for i in range(10)]
    groups = rag.reduce_groups(tok, SUMMARY, partials, budget=80, max_words=20)
    assert 1 < len(groups) < 10
    assert "\n".join(groups).split("\n") == partials
    assert rag.reduce_groups(tok, SUMMARY, partials, budget=1000, max_words=20) == [
        "\n".join(partials)
    ]
    assert rag.summary_tokens(10, 32) == 23 and rag.summary_tokens(400, 32) == 32
