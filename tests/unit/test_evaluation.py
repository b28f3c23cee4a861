"""Tier 1: the answer metrics (SQuAD's definitions, citations, abstention, judge agreement),
QA-set reading and sampling, verdict parsing and the judge's prompt budget, with expectations
computed by hand."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError
from tokenizers import Tokenizer

from slipway.documents.chunking import load_tokenizer
from slipway.documents.demo import DEMO_CORPUS, DEMO_QA
from slipway.evaluation import metrics as m
from slipway.evaluation.bundle import (
    AnswerScores,
    ExampleResult,
    Source,
    aggregate,
    judge_context,
    score_answer,
)
from slipway.evaluation.dataset import qa_set_path, read_qa_set, sample_examples
from slipway.evaluation.judge import (
    FAITHFULNESS,
    GeneratorChat,
    Judge,
    JudgeConfig,
    endpoint_judge,
    parse_verdict,
)
from slipway.generation import Request
from slipway.models import embedder_source
from slipway.rag.prompts import count_tokens


def test_normalization_drops_markers_punctuation_articles_and_case() -> None:
    assert m.normalize_answer("The  Quick, brown fox! [1]") == "quick brown fox"
    assert m.normalize_answer("An apple [12] a day.") == "apple day"
    assert m.strip_markers("Paris [2].") == "Paris  ."


def test_exact_match_and_token_f1_follow_squad() -> None:
    assert m.exact_match("the Eiffel Tower [2].", ["Eiffel Tower"]) == 1.0
    assert m.exact_match("Eiffel Tower in Paris", ["Eiffel Tower"]) == 0.0
    # 2 shared tokens: precision 2/3, recall 2/2 -> F1 = 2 * (2/3) / (2/3 + 1) = 0.8
    assert m.token_f1("Denver Broncos won", ["Denver Broncos"]) == pytest.approx(0.8)
    # the best gold answer counts
    assert m.token_f1("Denver", ["Carolina Panthers", "Denver Broncos"]) == pytest.approx(2 / 3)
    assert m.token_f1("nothing shared", ["Denver"]) == 0.0
    assert m.token_f1("anything", []) == 0.0


def test_containment_needs_whole_gold_tokens_in_order() -> None:
    assert m.contains_answer("They scored 24 points [1].", ["24"]) == 1.0
    assert m.contains_answer("They scored 240 points.", ["24"]) == 0.0
    assert m.contains_answer("Won by the Denver Broncos.", ["Denver Broncos", "x"]) == 1.0
    assert m.contains_answer("Broncos of Denver", ["Denver Broncos"]) == 0.0
    assert m.contains_answer("anything", ["the"]) == 0.0  # a gold that normalizes to nothing


def test_citation_precision_and_recall() -> None:
    # three cited sources, two of them chunks of the gold document
    assert m.citation_precision(["a", "a", "b"], ["a"]) == pytest.approx(2 / 3)
    assert m.citation_precision([], ["a"]) is None
    assert m.doc_recall(["a", "c"], ["a", "b"]) == 0.5
    assert m.doc_recall(["a"], []) is None


def test_binary_scores_agreement_and_kappa() -> None:
    scores = m.binary_scores([True, True, False, False], [True, False, True, False])
    assert (scores.precision, scores.recall, scores.f1) == (0.5, 0.5, 0.5)
    assert (scores.support, scores.predicted) == (2, 2)
    nothing_flagged = m.binary_scores([True, False], [False, False])
    assert nothing_flagged.precision is None and nothing_flagged.recall == 0.0
    assert nothing_flagged.f1 is None
    assert m.agreement([True, False, True], [True, True, True]) == pytest.approx(2 / 3)
    assert m.agreement([], []) is None
    # observed agreement 3/4; chance 0.5 * 0.25 + 0.5 * 0.75 = 0.5 -> kappa (0.75-0.5)/0.5
    assert m.cohen_kappa([True, True, False, False], [True, False, False, False]) == 0.5
    assert m.cohen_kappa([True, True], [True, True]) is None  # chance agreement is 1
    assert m.mean([1.0, None, 0.0]) == 0.5 and m.mean([None]) is None


def test_binary_scores_refuse_unequal_lengths() -> None:
    with pytest.raises(ValueError, match="1 labels but 2 predictions"):
        m.binary_scores([True], [False, True])


def source(n: int, doc: str, cited: bool) -> Source:
    return Source(
        n=n, id=f"{doc}#0", doc_id=doc, title=doc, cited=cited, relevance=0.5, text=f"text {n}"
    )


def test_score_answer_defines_each_metric_where_it_applies() -> None:
    sources = [source(1, "gold", True), source(2, "other", True), source(3, "gold2", False)]
    scores = score_answer("Denver Broncos [1] [2]", "stop", sources, ["Denver Broncos"], ["gold"])
    assert scores == AnswerScores(
        abstained=False,
        containment=1.0,
        exact_match=1.0,
        token_f1=1.0,
        citation_precision=0.5,
        citation_recall=1.0,
        source_recall=1.0,
        has_marker=True,
    )
    # an abstention on an answerable question scores 0, with no citation metrics
    abstained = score_answer("I don't know", "no_context", [], ["Denver Broncos"], ["gold"])
    assert (abstained.containment, abstained.token_f1, abstained.citation_recall) == (
        0.0,
        0.0,
        None,
    )
    assert abstained.has_marker is None
    # an unanswerable question: only the marker is defined
    assert abstained.abstained and not abstained.failed
    # an error instead of an answer: scored like no answer, but not an abstention
    failed = score_answer("", "error", [], ["Denver Broncos"], ["gold"])
    assert failed.failed and not failed.abstained and failed.containment == 0.0
    assert failed.has_marker is None and failed.citation_recall is None
    # an unanswerable question: only the marker is defined
    free = score_answer("Something [1]", "length", sources[:1], [], [])
    assert free.containment is None and free.citation_precision is None and free.has_marker
    # no gold documents given: no citation metrics
    assert score_answer("x", "stop", sources, ["x"], []).citation_recall is None


def result(
    id: str,
    golds: list[str],
    scores: AnswerScores,
    faithful: bool | None = None,
    relevant: bool | None = None,
) -> ExampleResult:
    return ExampleResult(
        id=id,
        question="q",
        answers=golds,
        doc_ids=[],
        answer="a",
        finish_reason="no_context" if scores.abstained else "error" if scores.failed else "stop",
        prompt_version="answer/1",
        index_version="v000001",
        sources=[],
        seconds=0.1,
        scores=scores,
        judge_faithful=faithful,
        judge_relevant=relevant,
    )


def test_aggregate_by_hand() -> None:
    results = [
        # answerable, answered correctly, cites the gold document
        result(
            "1",
            ["x"],
            AnswerScores(
                abstained=False,
                containment=1.0,
                exact_match=0.0,
                token_f1=0.5,
                citation_precision=1.0,
                citation_recall=1.0,
                source_recall=1.0,
                has_marker=True,
            ),
            faithful=True,
            relevant=True,
        ),
        # answerable, answered wrongly, cites nothing
        result(
            "2",
            ["y"],
            AnswerScores(
                abstained=False,
                containment=0.0,
                exact_match=0.0,
                token_f1=0.0,
                citation_recall=0.0,
                source_recall=1.0,
                has_marker=False,
            ),
            faithful=True,
            relevant=None,
        ),
        # answerable, abstained (wrongly)
        result("3", ["z"], AnswerScores(abstained=True, containment=0.0, token_f1=0.0)),
        # unanswerable, abstained (rightly)
        result("4", [], AnswerScores(abstained=True)),
        # unanswerable, answered (wrongly)
        result("5", [], AnswerScores(abstained=False, has_marker=True), faithful=False),
        # answerable, refused with an error: no answer, not an abstention, not judged
        result("6", ["w"], AnswerScores(abstained=False, failed=True, containment=0.0)),
    ]
    flat = aggregate(results, judged=True)
    assert flat["answer_containment"] == pytest.approx(1 / 4)
    assert flat["answer_token_f1"] == pytest.approx(0.5 / 3)  # 6 defines no token F1 here
    assert flat["answer_error_rate"] == pytest.approx(1 / 6)
    assert flat["citation_precision"] == 1.0  # only the answer that cites something
    assert flat["citation_recall"] == 0.5 and flat["source_recall"] == 1.0
    assert flat["marker_rate"] == pytest.approx(2 / 3)  # of the three answers
    assert flat["abstain_rate"] == pytest.approx(2 / 6)
    # abstentions: 3 (wrong), 4 (right); should abstain: 4, 5 -> precision 1/2, recall 1/2
    assert (flat["abstain_precision"], flat["abstain_recall"], flat["abstain_f1"]) == (
        0.5,
        0.5,
        0.5,
    )
    # the judge: faithful yes, yes, no (3 answers); relevant yes (one of three)
    assert flat["judge_faithfulness"] == pytest.approx(2 / 3)
    assert flat["judge_relevance"] == 1.0
    assert flat["judge_coverage"] == pytest.approx(4 / 6)
    # faithful vs containment on answered answerable: (yes, 1) agree, (yes, 0) disagree
    assert flat["judge_agreement"] == 0.5
    assert flat["judge_kappa"] == 0.0  # the judge said yes to both: no better than chance
    assert "abstain_f1" not in aggregate(results[:3], judged=False)
    assert "judge_agreement" not in aggregate(results, judged=False)


def test_judge_context_is_the_cited_sources_else_all() -> None:
    sources = [source(1, "a", False), source(2, "b", True)]
    assert judge_context(sources) == [(2, "b", "text 2")]
    assert [n for n, _, _ in judge_context([source(1, "a", False)])] == [1]


def test_parse_verdict() -> None:
    assert parse_verdict('{"verdict": "yes"}') is True
    assert parse_verdict(' {"verdict":"No"} ') is False
    assert parse_verdict('{"verdict": true}') is True
    assert parse_verdict("No, the answer adds a claim.") is False
    assert parse_verdict("Answer: yes") is True
    assert parse_verdict("Yesterday it rained") is None
    assert parse_verdict("maybe") is None


def write_jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "\n")
    return path


def test_read_qa_set_accepts_doc_ids_passage_id_and_unanswerable(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "qa.jsonl",
        [
            {"id": "a", "question": " Who? ", "answers": ["Ann", ""], "doc_ids": ["d1", "d2"]},
            {"question": "Where?", "answers": "Paris", "passage_id": "Paris#0"},
            {"question": "Not in the index?", "answers": []},
        ],
    )
    first, second, third = read_qa_set(path)
    assert (first.id, first.question, first.answers, first.doc_ids) == (
        "a",
        "Who?",
        ("Ann",),
        ("d1", "d2"),
    )
    assert (second.id, second.answers, second.doc_ids) == ("2", ("Paris",), ("Paris#0",))
    assert not third.answerable and first.answerable


def test_a_beir_folder_with_answers_is_a_qa_set(shared_data: Path, tmp_path: Path) -> None:
    wiki = read_qa_set(shared_data / "2wikimqa")
    assert len(wiki) == 374 and all(e.answerable for e in wiki)
    first = json.loads((shared_data / "2wikimqa" / "queries.jsonl").read_text().splitlines()[0])
    assert (wiki[0].id, wiki[0].question) == (first["_id"], first["text"])
    assert wiki[0].answers == tuple(first["answers"]) and len(wiki[0].doc_ids) == 2
    # a folder without qrels, or queries without answers, is refused with what to add
    (tmp_path / "set").mkdir()
    write_jsonl(tmp_path / "set" / "queries.jsonl", [{"_id": "q", "text": "Who?"}])
    with pytest.raises(FileNotFoundError, match=r"qrels/test.tsv"):
        read_qa_set(tmp_path / "set")
    (tmp_path / "set" / "qrels").mkdir()
    (tmp_path / "set" / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq\td\t1\n")
    with pytest.raises(ValueError, match=r"queries.jsonl:1: a QA set's queries need 'answers'"):
        read_qa_set(tmp_path / "set")


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([{"answers": ["x"]}], r"qa.jsonl:1: needs a non-empty 'question'"),
        ([{"question": "q", "answers": [1]}], r"qa.jsonl:1: 'answers' must be a string or a list"),
        ([{"id": 1, "question": "q"}, {"id": 1, "question": "r"}], "occurs more than once"),
        (["just a string"], "expected a JSON object"),
    ],
)
def test_read_qa_set_names_the_line_and_field(
    tmp_path: Path, rows: list[object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        read_qa_set(write_jsonl(tmp_path / "qa.jsonl", rows))


def test_read_qa_set_missing_file_names_the_setting(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="evaluation.qa_path"):
        read_qa_set(tmp_path / "none.jsonl")


def test_the_packaged_qa_set_and_its_sample() -> None:
    examples = read_qa_set(DEMO_QA)
    assert len(examples) == 1190 and all(e.answerable and len(e.doc_ids) == 1 for e in examples)
    sample = sample_examples(examples, 20, seed=0)
    assert len(sample) == 20 and sample == sample_examples(examples, 20, seed=0)
    assert sample != sample_examples(examples, 20, seed=1)
    positions = [examples.index(e) for e in sample]
    assert positions == sorted(positions)  # in the set's order
    assert sample_examples(examples[:5], 0, 0) == examples[:5]
    assert sample_examples(examples[:5], 9, 0) == examples[:5]


def test_qa_set_path_defaults_to_the_demo_set_for_the_demo_corpus(tmp_path: Path) -> None:
    assert qa_set_path(None, None) == DEMO_QA
    assert qa_set_path(str(DEMO_CORPUS), None) == DEMO_QA
    assert qa_set_path(str(tmp_path), None) is None
    assert qa_set_path(str(tmp_path), str(tmp_path / "qa.jsonl")) == tmp_path / "qa.jsonl"


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return load_tokenizer(embedder_source().path)


def never_called(_request: Request) -> dict[str, object]:
    raise AssertionError("the prompt is only built here")


def test_judge_prompt_fits_the_generator_context(tok: Tokenizer) -> None:
    chat = GeneratorChat(never_called, tok, context=300, guided=False, name="test")
    judge = Judge(chat, structured=False, max_tokens=16)
    long_sources = " ".join(f"word{i}" for i in range(2000))
    prompt = judge._fit(FAITHFULNESS, "Which river?", "The Rhine [1].", long_sources)
    assert prompt is not None
    assert count_tokens(tok, prompt) <= chat.budget - 16  # 300 - 48 reserve - 16 new tokens
    assert "Question: Which river?" in prompt and "Answer: The Rhine [1]." in prompt
    assert prompt.endswith('{"verdict": "yes"} or {"verdict": "no"}.')
    assert "word0 word1" in prompt and "word1999" not in prompt
    # a long answer is cut too, keeping room for some sources
    long_answer = " ".join(["claim"] * 1000)
    cut = judge._fit(FAITHFULNESS, "Which river?", long_answer, long_sources)
    assert cut is not None and count_tokens(tok, cut) <= chat.budget - 16
    assert "word0" in cut
    # a question longer than the whole context cannot be judged
    assert judge._fit(FAITHFULNESS, "why " * 400, "a", "b") is None
    assert judge.info.weak and "weak judge" in judge.info.note


def test_an_endpoint_judge_names_what_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValidationError, match="base_ur"):
        JudgeConfig.model_validate({"base_ur": "http://127.0.0.1:9/v1"})  # a typo is an error
    with pytest.raises(ValueError, match=r"judge.base_url and judge.model"):
        endpoint_judge(JudgeConfig(base_url="http://127.0.0.1:9/v1"))
    with pytest.raises(RuntimeError, match="needs a secret store"):
        endpoint_judge(JudgeConfig(secret="judge"))

    def no_secret(name: str) -> dict[str, str]:
        raise KeyError(name)

    with pytest.raises(RuntimeError, match="zenml secret create judge --api_key"):
        endpoint_judge(JudgeConfig(secret="judge"), no_secret)
    monkeypatch.setenv("MY_JUDGE_KEY", "sk-test")
    judge = endpoint_judge(
        JudgeConfig(base_url="http://127.0.0.1:9/v1", model="big", api_key_env="MY_JUDGE_KEY"),
    )
    assert judge.info.name == "big at http://127.0.0.1:9/v1" and not judge.info.weak
    unreachable = judge.relevance("Which river?", "The Rhine.")  # nothing listens on port 9
    assert unreachable.value is None and "APIConnectionError" in (unreachable.error or "")
    from_secret = endpoint_judge(
        JudgeConfig(secret="judge"),
        lambda _name: {"base_url": "http://127.0.0.1:9/v1", "model": "m", "api_key": "k"},
    )
    assert from_secret.info.name == "m at http://127.0.0.1:9/v1"
