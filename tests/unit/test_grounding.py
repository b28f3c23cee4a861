"""Tier 1: answers that show their sources, and abstention when none is relevant."""

from __future__ import annotations

import numpy as np

from slipway.rag import grounding as g

SOURCES = [
    "Warsaw is the capital of Poland and lies on the Vistula river.",
    "The Amazon rainforest covers much of the Amazon basin in South America.",
]


def test_only_markers_naming_a_source_count_and_the_rest_are_removed() -> None:
    assert g.valid_markers("As [1] and [3] say, not [7] or [x].", 3) == {1, 3}
    assert g.drop_invalid_markers("Poland [1] [7].", 2) == "Poland [1]."


def test_sentences_without_markers_are_attributed_by_overlap() -> None:
    answer = "Warsaw is the capital of Poland. The rainforest covers the Amazon basin!"
    assert g.attribute(answer, SOURCES) == (
        "Warsaw is the capital of Poland [1]. The rainforest covers the Amazon basin [2]!"
    )


def test_cited_sentences_keep_their_markers_and_unsupported_ones_stay_unmarked() -> None:
    answer = "It lies on the Vistula [1]. Bananas are yellow fruit."
    assert g.attribute(answer, SOURCES) == answer
    assert g.attribute("Vistula [9]", SOURCES) == "Vistula [1]"  # a wrong marker replaced
    assert g.attribute("", SOURCES) == ""
    assert g.attribute("Warsaw.", []) == "Warsaw."


def test_overlap_ignores_stopwords() -> None:
    assert g.overlap("the of and", SOURCES[0]) == 0.0
    assert g.overlap("Warsaw and Berlin", SOURCES[0]) == 0.5


def test_abstain_when_no_passage_clears_the_threshold() -> None:
    query = np.array([1.0, 0.0], np.float32)
    passages = np.array([[0.6, 0.8], [0.0, 1.0]], np.float32)
    scores = g.relevance(query, passages)
    assert scores == [0.6000000238418579, 0.0]
    assert not g.should_abstain(scores, 0.5)
    assert g.should_abstain(scores, 0.7)
    assert g.should_abstain([], 0.0)  # nothing retrieved (a filter that matches nothing)
