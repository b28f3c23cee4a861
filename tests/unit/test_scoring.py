"""Tier 1: deterministic answer metrics."""

from __future__ import annotations

import pytest

from slipway.rag import scoring as s


def test_normalisation_drops_case_punctuation_articles_and_markers() -> None:
    assert s.normalize("The Vistula, [2] river!") == "vistula river"


def test_containment_exact_match_and_token_f1() -> None:
    golds = ["1816", "in 1816"]
    assert s.contains("It was founded in 1816 [1].", golds)
    assert not s.contains("It was founded in 18160.", golds)
    assert s.exact_match("In 1816.", golds) and not s.exact_match("1816 or so", golds)
    assert s.token_f1("founded in 1816", ["1816"]) == pytest.approx(0.5)
    assert s.token_f1("nothing", golds) == 0.0


def test_citations_and_markers() -> None:
    assert s.citation_scores(["a", "b"], ["a"]) == (0.5, 1.0)
    assert s.citation_scores([], ["a"]) == (1.0, 0.0)
    assert s.has_marker("Yes [1].") and not s.has_marker("Yes [x].")


def test_abstention_scores() -> None:
    got = s.Abstention.of([True, True, False, False], [False, True, True, False])
    assert (got.precision, got.recall) == (0.5, 0.5)
    assert got.f1 == pytest.approx(0.5)
    with pytest.raises(ValueError):
        s.Abstention.of([True], [])
