"""Tier 1: Personalized PageRank over the entity-chunk graph, against networkx's PageRank of
the same weighted graph, and the two-hop behaviour graph retrieval is for."""

from __future__ import annotations

from pathlib import Path

import networkx as nx
import numpy as np
import pytest

from slipway.graph.ppr import EntityChunkGraph, PersonalizedPageRank, entity_weights


def random_graph(seed: int = 0) -> dict[str, dict[str, int]]:
    rng = np.random.default_rng(seed)
    entities = [f"PERSON:e{i}" for i in range(15)]
    chunks: dict[str, dict[str, int]] = {}
    for c in range(25):
        picked = rng.choice(len(entities), size=int(rng.integers(1, 4)), replace=False)
        chunks[f"d{c}#0"] = {entities[i]: int(rng.integers(1, 4)) for i in picked}
    return chunks


def test_scores_match_networkx_pagerank_on_the_same_graph() -> None:
    chunk_entities = random_graph()
    graph = EntityChunkGraph.from_mentions(chunk_entities, sorted(chunk_entities))
    ppr = PersonalizedPageRank(graph, damping=0.6)
    idf = dict(zip(graph.entity_ids, entity_weights(graph.mentions), strict=True))
    g = nx.Graph()
    for chunk, counts in chunk_entities.items():
        for entity, n in counts.items():
            g.add_edge(("c", chunk), ("e", entity), weight=n * idf[entity])
    seeds = {graph.entity_ids.index("PERSON:e3"): 2.0, graph.entity_ids.index("PERSON:e7"): 1.0}
    personal = {node: 0.0 for node in g}
    personal[("e", "PERSON:e3")], personal[("e", "PERSON:e7")] = 2 / 3, 1 / 3
    expected = nx.pagerank(g, alpha=0.6, personalization=personal, weight="weight", tol=1e-12)
    ours = ppr.scores(seeds)
    for row, chunk in enumerate(graph.chunk_ids):
        assert ours[row] == pytest.approx(expected[("c", chunk)], rel=1e-6, abs=1e-9)


def test_the_walk_reaches_the_second_hop_and_prefers_rare_entities(tmp_path: Path) -> None:
    chunk_entities = {
        "film#0": {"WORK:the film": 1, "PERSON:the director": 1},  # names the seed
        "director#0": {"PERSON:the director": 1, "PLACE:his town": 1},  # one hop away
        "town#0": {"PLACE:his town": 1},  # two hops
        "other#0": {"PLACE:elsewhere": 1},  # unreachable
        "common#0": {"ORG:everyone": 1, "WORK:the film": 1},
        **{f"noise{i}#0": {"ORG:everyone": 1} for i in range(20)},
    }
    graph = EntityChunkGraph.from_mentions(chunk_entities, list(chunk_entities))
    graph.save(tmp_path / "graph")
    graph = EntityChunkGraph.load(tmp_path / "graph")
    ppr = PersonalizedPageRank(graph)
    seeds = dict.fromkeys(ppr.seed_columns(["the film"]), 1.0)
    ranked = [c for c, _ in ppr.search(seeds, 10)]
    assert ranked[:2] == ["film#0", "director#0"] or ranked[:2] == ["film#0", "common#0"]
    assert "director#0" in ranked[:3] and "other#0" not in ranked
    scores = dict(ppr.search(seeds, 30))
    assert scores["director#0"] > scores.get("noise0#0", 0.0)  # the rare link wins
    assert ppr.search({}, 5) == []
    with pytest.raises(ValueError, match="damping"):
        PersonalizedPageRank(graph, damping=1.0)


def test_names_are_found_as_whole_words_and_seed_by_rarity() -> None:
    from slipway.graph.ppr import name_index, names_in

    index = name_index(["polish-russian war", "fresno, california", "war", "us", "film"])
    text = "Who directed the film Polish-Russian War, shot in Fresno, California?"
    # "war" and "us" are too short to look up as n-grams
    assert names_in(text, index) == {"polish-russian war", "fresno, california", "film"}
    assert names_in("A warship of films sank.", index) == set()  # whole words only
    chunk_entities = {
        "a#0": {"WORK:the film": 1, "OTHER:film": 1},
        **{f"n{i}#0": {"OTHER:film": 1} for i in range(9)},
    }
    ppr = PersonalizedPageRank(EntityChunkGraph.from_mentions(chunk_entities, list(chunk_entities)))
    seeds = ppr.seeds("Who made the film?", ["the film"])
    by_name = {ppr.graph.entity_ids[c]: w for c, w in seeds.items()}
    assert set(by_name) == {"WORK:the film", "OTHER:film"}
    assert by_name["WORK:the film"] > by_name["OTHER:film"]  # rare outweighs common
