"""Tier 1: retraining data from labelled pairs, synthetic queries and feedback; merged, split by
query with a frozen validation set, and mined for hard negatives."""

from __future__ import annotations

import json
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from slipway.prompts import Prompt, load_file
from slipway.training.data import (
    SYNTHETIC_PROMPT_FILE,
    MergeStats,
    NearDuplicates,
    Pair,
    TrainingDataError,
    chat_ask,
    clean_question,
    data_stats,
    feedback_pairs,
    jaccard,
    labelled_pairs,
    merge,
    mine_hard_negatives,
    read_feedback,
    sample_ids,
    shingles,
    split,
    split_ids,
    synthetic_pairs,
    training_examples,
)
from tests.feedback_rows import exported_row as rated


def write_lines(path: Path, rows: list[Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def pair(query: str, *positives: str, source: str = "labelled", qid: str = "") -> Pair:
    return Pair.model_validate(
        {
            "query_id": qid or query,
            "query": query,
            "positives": list(positives),
            "source": source,
        }
    )


# --- labelled pairs -------------------------------------------------------------------------


def beir(root: Path, qrels: str) -> Path:
    write_lines(
        root / "queries.jsonl",
        [
            {"_id": "q1", "text": "Where is Warsaw?"},
            {"_id": "q2", "text": "What is the Vistula?"},
            {"_id": "q3", "text": "Who founded Krakow?"},
            {"_id": "q9", "text": "A query without judgements"},
        ],
    )
    (root / "qrels").mkdir(parents=True, exist_ok=True)
    (root / "qrels" / "train.tsv").write_text(qrels, encoding="utf-8")
    return root


def test_beir_folder_gives_the_judged_queries_with_positive_scores(tmp_path: Path) -> None:
    root = beir(
        tmp_path / "beir",
        "query-id\tcorpus-id\tscore\n"
        "q1\twarsaw\t1\nq1\tpoland\t2\nq2\tvistula\t0\nq3\tkrakow\t1\nq4\tghost\t1\n",
    )
    pairs = labelled_pairs(root)
    assert [(p.query_id, p.query, p.positives, p.source) for p in pairs] == [
        ("q1", "Where is Warsaw?", ["warsaw", "poland"], "labelled"),
        ("q3", "Who founded Krakow?", ["krakow"], "labelled"),
    ]


def test_beir_folder_without_the_split_names_the_splits_it_has(tmp_path: Path) -> None:
    root = beir(tmp_path / "beir", "query-id\tcorpus-id\tscore\nq1\twarsaw\t1\n")
    with pytest.raises(TrainingDataError, match=r"qrels/<split>.tsv.*'dev'.*\['train'\]"):
        labelled_pairs(root, split="dev")


def test_beir_folder_with_a_bad_qrels_header_or_query_row_says_which(tmp_path: Path) -> None:
    root = beir(tmp_path / "beir", "qid\tdoc\tscore\nq1\twarsaw\t1\n")
    with pytest.raises(TrainingDataError, match="header 'query-id corpus-id score'"):
        labelled_pairs(root)
    root = beir(tmp_path / "beir2", "query-id\tcorpus-id\tscore\nq1\twarsaw\t1\n")
    with (root / "queries.jsonl").open("a", encoding="utf-8") as handle:
        handle.write('{"id": "q5", "text": "no _id"}\n')
    with pytest.raises(TrainingDataError, match=r"queries.jsonl:5: a query needs '_id'"):
        labelled_pairs(root)


def test_jsonl_pairs_take_ids_or_derive_stable_ones(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / "pairs.jsonl",
        [
            {"id": 7, "query": "Where is Warsaw?", "doc_ids": ["warsaw", "warsaw", "poland"]},
            {"question": "What is the Vistula?", "doc_ids": ["vistula"]},  # a QA-set row
        ],
    )
    first, second = labelled_pairs(path)
    assert (first.query_id, first.positives) == ("7", ["warsaw", "poland"])
    assert second.query == "What is the Vistula?" and second.positives == ["vistula"]
    assert second.query_id.startswith("labelled-")
    assert labelled_pairs(path)[1].query_id == second.query_id  # stable across reads


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (['{"query": "ok query", "doc_ids": ["a"]}', "{not json"], r"pairs.jsonl:2: not JSON"),
        (['{"query": "", "doc_ids": ["a"]}'], r"pairs.jsonl:1: 'query' must be"),
        (['{"query": "q", "doc_ids": []}'], r"pairs.jsonl:1: 'doc_ids' must be a non-empty"),
        (['{"query": "q", "doc_ids": "a"}'], r"pairs.jsonl:1: 'doc_ids'"),
        (["[1, 2]"], r"pairs.jsonl:1: expected a JSON object"),
        (["", "  "], r"holds no query"),
    ],
)
def test_bad_jsonl_rows_name_their_line(tmp_path: Path, lines: list[str], message: str) -> None:
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(TrainingDataError, match=message):
        labelled_pairs(path)


def test_missing_labelled_data_says_what_to_give(tmp_path: Path) -> None:
    with pytest.raises(TrainingDataError, match="BEIR folder .* or a JSONL file"):
        labelled_pairs(tmp_path / "nowhere")


# --- feedback -------------------------------------------------------------------------------


def test_feedback_rows_become_pairs_of_expected_else_cited_documents(tmp_path: Path) -> None:
    rows = [
        rated("positive"),
        rated("positive", request_id="r-2", expected_chunk_ids=["poland#0", "poland#1"]),
        rated("negative", request_id="r-3", expected_chunk_ids=["krakow#2"]),
        rated("negative", request_id="r-4"),  # wrong, and no better chunks given
        rated("positive", request_id="r-5", question=None),
        rated("positive", request_id="r-6", citations=[]),  # an abstention cites nothing
    ]
    path = write_lines(tmp_path / "feedback.jsonl", rows)
    pairs, stats = feedback_pairs(read_feedback(path))
    assert [(p.query_id, p.positives, p.source) for p in pairs] == [
        ("feedback-r-positive", ["warsaw", "vistula"], "feedback"),
        ("feedback-r-2", ["poland"], "feedback"),
        ("feedback-r-3", ["krakow"], "feedback"),
    ]
    assert stats.model_dump() == {
        "rows": 6,
        "kept": 3,
        "skipped_negative": 1,
        "skipped_empty": 2,
    }


def test_feedback_with_an_unknown_rating_is_refused(tmp_path: Path) -> None:
    with pytest.raises(TrainingDataError, match="row 2: 'rating' must be"):
        feedback_pairs([rated("positive"), rated("meh")])
    path = write_lines(tmp_path / "qa.jsonl", [{"question": "q", "doc_ids": ["a"]}])
    with pytest.raises(TrainingDataError, match=r"qa.jsonl:1: .*without --qa-set"):
        read_feedback(path)


# --- synthetic queries ----------------------------------------------------------------------

PASSAGES = {
    "p1": "Warsaw lies on the Vistula river.",
    "p2": "The Vistula flows through the city of Warsaw.",
    "p3": "An empty reply comes back for this one.",
    "p4": "Krakow is in southern Poland.",
    "p5": "Rayleigh scattering makes the sky blue.",
    "p6": "A reply too short to be a question.",
}
REPLIES = {
    "p1": 'Question: "What river flows through Warsaw?"\nIt is the Vistula.',
    "p2": "What river flows through Warsaw city?",  # a near-duplicate of p1's
    "p3": "",
    "p4": "Where is Krakow?",  # the retriever does not find p4 for it
    "p5": "1. **Why is the sky blue**",
    "p6": "Yes.",
}
RANKINGS = {
    "What river flows through Warsaw?": ["p1", "p2"],
    "What river flows through Warsaw city?": ["p2", "p1"],
    "Where is Krakow?": ["p1", "p2", "p4"],
    "Why is the sky blue": ["p3", "p5"],
}


class Generator:
    """A generator that answers each passage's prompt with its scripted reply."""

    def __init__(self) -> None:
        self.prompts: list[str] = []

    def __call__(self, prompt: str) -> str:
        self.prompts.append(prompt)
        (pid,) = [pid for pid, text in PASSAGES.items() if text in prompt]
        return REPLIES[pid]


class Retriever:
    """Scripted rankings; records the batches it was asked."""

    def __init__(self, rankings: Mapping[str, list[str]]) -> None:
        self.rankings = rankings
        self.batches: list[list[str]] = []

    def __call__(self, queries: list[str]) -> list[list[str]]:
        self.batches.append(list(queries))
        return [self.rankings.get(q, []) for q in queries]


def shipped_prompt() -> Prompt:
    return load_file(SYNTHETIC_PROMPT_FILE)


def test_synthetic_keeps_round_trip_consistent_questions_that_are_not_near_duplicates() -> None:
    ask, retrieve = Generator(), Retriever(RANKINGS)
    pairs, stats = synthetic_pairs(
        PASSAGES, ask, retrieve, shipped_prompt(), k=2, batch_size=2, progress=False
    )
    assert [(p.query, p.positives, p.source) for p in pairs] == [
        ("What river flows through Warsaw?", ["p1"], "synthetic"),
        ("Why is the sky blue", ["p5"], "synthetic"),
    ]
    assert stats.model_dump() == {
        "passages": 6,
        "generated": 6,
        "empty": 2,
        "not_round_trip": 1,
        "near_duplicate": 1,
        "kept": 2,
    }
    assert len(ask.prompts) == 6 and PASSAGES["p1"] in ask.prompts[0]
    assert "{{" not in ask.prompts[0]
    assert retrieve.batches == [  # one call per batch of passages; the empty p3 not sent
        ["What river flows through Warsaw?", "What river flows through Warsaw city?"],
        ["Where is Krakow?"],
        ["Why is the sky blue"],
    ]
    # with a deeper k, p4 is found for its question and kept
    pairs, stats = synthetic_pairs(PASSAGES, Generator(), retrieve, shipped_prompt(), k=3)
    assert stats.kept == 3 and stats.not_round_trip == 0
    assert "Where is Krakow?" in [p.query for p in pairs]


def test_synthetic_samples_passages_with_the_seed_and_asks_per_passage() -> None:
    prompt = Prompt("t", "1", "Ask about: {{passage}}")
    first = Generator()
    _, stats = synthetic_pairs(
        PASSAGES, first, Retriever(RANKINGS), prompt, max_passages=3, seed=1, per_passage=2
    )
    again = Generator()
    synthetic_pairs(
        PASSAGES, again, Retriever(RANKINGS), prompt, max_passages=3, seed=1, per_passage=2
    )
    assert first.prompts == again.prompts and len(first.prompts) == 6
    assert stats.passages == 3 and stats.generated == 6
    assert stats.kept + stats.near_duplicate + stats.not_round_trip + stats.empty == 6
    # a generator that repeats itself adds nothing on the second ask
    assert 0 < stats.kept <= 3 and stats.near_duplicate >= stats.kept
    assert sample_ids(PASSAGES, 3, seed=1) != sample_ids(PASSAGES, 3, seed=2)
    long = {"p1": "word " * 5000}
    prompts: list[str] = []
    synthetic_pairs(
        long,
        lambda p: prompts.append(p) or "",
        Retriever({}),
        prompt,
        max_passage_chars=100,
        progress=False,
    )
    assert len(prompts[0]) == len("Ask about: ") + 100


def test_synthetic_refuses_a_prompt_without_the_passage_or_a_bad_retriever() -> None:
    with pytest.raises(TrainingDataError, match=r"must contain \{\{passage\}\}"):
        synthetic_pairs(PASSAGES, Generator(), Retriever({}), Prompt("t", "1", "{{text}}"))
    with pytest.raises(TrainingDataError, match="2 rankings for 1 queries"):
        synthetic_pairs(
            {"p1": PASSAGES["p1"]},
            Generator(),
            lambda qs: [[], []],
            shipped_prompt(),
            progress=False,
        )


@pytest.mark.parametrize(
    ("reply", "question"),
    [
        ("Question: What is the capital of Poland?", "What is the capital of Poland?"),
        ('"Where does the Vistula flow?" It flows north.', "Where does the Vistula flow?"),
        ("Here is a question:\nWho founded Krakow first?", "Who founded Krakow first?"),
        ("Q1: which river is longest", "which river is longest"),
        ("- 'how tall is the palace'", "how tall is the palace"),
        ("**Question:** When was Warsaw rebuilt?", "When was Warsaw rebuilt?"),
        ("Query optimisation in databases explained", "Query optimisation in databases explained"),
        ("Warsaw?", None),
        ("", None),
        ("1234 5678 9012", None),
        ("word " * 40, None),
        ("Question:\n\n", None),
    ],
)
def test_clean_question(reply: str, question: str | None) -> None:
    assert clean_question(reply) == question


def test_chat_ask_puts_the_prompt_to_a_chat_model() -> None:
    class Model:
        name, weak, budget, concurrency = "fake", True, None, 1

        def __init__(self) -> None:
            self.calls: list[tuple[str, int, object]] = []

        def count(self, text: str) -> int:
            return len(text.split())

        def truncate(self, text: str, tokens: int) -> str:
            return text

        def ask(self, prompt: str, max_tokens: int, schema: Mapping[str, Any] | None) -> str:
            self.calls.append((prompt, max_tokens, schema))
            return "Where is Warsaw?"

    model = Model()
    assert chat_ask(model, max_tokens=20)("prompt") == "Where is Warsaw?"
    assert model.calls == [("prompt", 20, None)]


# --- near duplicates ------------------------------------------------------------------------


def test_near_duplicates_agree_with_comparing_every_pair() -> None:
    rng = random.Random(0)
    vocabulary = [f"w{i}" for i in range(12)]
    texts = [" ".join(rng.sample(vocabulary, rng.randint(1, 7))) for _ in range(400)]
    for threshold in (0.5, 0.6, 0.8, 1.0):
        index, kept = NearDuplicates(threshold), []
        for text in texts:
            expected = all(jaccard(shingles(text), shingles(k)) < threshold for k in kept)
            assert index.add(text) is expected
            if expected:
                kept.append(text)
        assert 1 < len(kept) < len(texts)


# --- merge and split ------------------------------------------------------------------------


def test_merge_keeps_the_first_of_each_normalized_query_with_all_positives() -> None:
    labelled = [pair("What is the Vistula?", "vistula"), pair("Where is Warsaw?", "warsaw")]
    synthetic = [pair("what is  the vistula", "poland", source="synthetic")]
    feedback = [
        pair("WHERE is Warsaw!", "warsaw", "mazovia", source="feedback"),
        pair("Who founded Krakow?", "krakow", source="feedback"),
    ]
    pairs, stats = merge(labelled, synthetic, feedback)
    assert [(p.query, p.positives, p.source) for p in pairs] == [
        ("What is the Vistula?", ["vistula", "poland"], "labelled"),
        ("Where is Warsaw?", ["warsaw", "mazovia"], "labelled"),
        ("Who founded Krakow?", ["krakow"], "feedback"),
    ]
    assert stats.given == {"labelled": 2, "synthetic": 1, "feedback": 2}
    assert stats.kept == {"labelled": 2, "synthetic": 0, "feedback": 1}
    assert stats.duplicates == 2
    assert labelled[0].positives == ["vistula"]  # the inputs are left as they were


def many(count: int, start: int = 0) -> list[Pair]:
    return [pair(f"question number {i}", f"d{i}", qid=f"q{i}") for i in range(start, count)]


def test_split_is_by_query_deterministic_and_near_the_fraction() -> None:
    pairs = many(400)
    train, validation = split(pairs, 0.2, seed=3)
    assert len(train) + len(validation) == 400
    assert 40 < len(validation) < 120
    assert {p.query_id for p in train}.isdisjoint(p.query_id for p in validation)
    _, again_validation = split(list(reversed(pairs)), 0.2, seed=3)
    assert {p.query_id for p in again_validation} == {p.query_id for p in validation}
    other = split(pairs, 0.2, seed=4)[1]
    assert {p.query_id for p in other} != {p.query_id for p in validation}
    # a query's side depends on its own text only: more data leaves old queries where they were
    grown = split(many(800), 0.2, seed=3)[1]
    assert {p.query_id for p in grown if int(p.query_id[1:]) < 400} == {
        p.query_id for p in validation
    }
    assert len(split(many(2), 0.01)[1]) == 1  # at least one query to validate on


def test_frozen_validation_set_stays_identical_when_more_data_arrives(tmp_path: Path) -> None:
    frozen = tmp_path / "splits" / "validation.json"
    train, validation = split(many(100), 0.2, seed=0, frozen=frozen)
    assert frozen.is_file() and validation
    # the next run: new queries, one old validation query now has another positive
    more = many(300)
    more[int(validation[0].query_id[1:])].positives.append("extra")
    _, next_validation = split(more, 0.5, seed=0, frozen=None)
    assert next_validation != validation  # without the frozen file the set would move
    with pytest.raises(TrainingDataError, match="validation_fraction=0.2, seed=0"):
        split(more, 0.5, seed=0, frozen=frozen)
    next_train, next_validation = split(more, 0.2, seed=0, frozen=frozen)
    assert next_validation == validation
    held = {p.query for p in validation}
    assert not any(p.query in held for p in next_train)
    assert len(next_train) == 300 - len(validation)
    assert {p.query_id for p in train} <= {p.query_id for p in next_train}
    frozen.write_text("{}", encoding="utf-8")
    with pytest.raises(TrainingDataError, match="not a frozen validation set"):
        split(more, 0.2, seed=0, frozen=frozen)


def test_split_ids_halves_judged_queries_by_seed() -> None:
    ids = [str(i) for i in range(1, 226)]
    train, held = split_ids(ids, 0.5, seed=0)
    assert len(held) == 112 and len(train) == 113
    assert sorted(train + held, key=int) == ids and not set(train) & set(held)
    assert split_ids(ids, 0.5, seed=0) == (train, held)
    assert split_ids(ids, 0.5, seed=1)[1] != held
    assert train == sorted(train, key=int)  # the given order is kept
    with pytest.raises(ValueError, match="fraction"):
        split_ids(ids, 1.5)


# --- hard negatives and examples ------------------------------------------------------------

TEXT = "the vistula is the longest river in poland and flows north through warsaw to the sea"
TEXTS = {
    "d1": TEXT,
    "d1copy": TEXT.replace("sea", "baltic sea"),  # the same passage, lightly edited
    "d2": "krakow was the capital of poland until the late sixteenth century",
    "d3": "the oder river forms part of the border between poland and germany",
    "d4": "gdansk is a port city on the baltic coast at the mouth of the vistula",
}


def test_hard_negatives_skip_positives_near_duplicates_and_unknown_ids() -> None:
    pairs = [pair("Which river flows through Warsaw?", "d1", qid="q1")]
    ranking = ["d1copy", "d1", "d2", "missing", "d2", "d3", "d4"]
    retrieve = Retriever({pairs[0].query: ranking})
    assert mine_hard_negatives(pairs, retrieve, TEXTS, per_query=2, progress=False) == {
        "q1": ["d2", "d3"]
    }
    assert mine_hard_negatives(pairs, retrieve, TEXTS, per_query=2, skip_top=2) == {
        "q1": ["d3", "d4"]
    }
    assert mine_hard_negatives(pairs, retrieve, TEXTS, depth=3) == {"q1": ["d2"]}
    # without the near-duplicate rule the edited copy of the positive would be a "negative"
    assert mine_hard_negatives(pairs, retrieve, TEXTS, per_query=1, near_duplicate=1.0) == {
        "q1": ["d1copy"]
    }


def test_training_examples_give_one_row_per_query_and_positive() -> None:
    pairs = [pair("q one", "d1", "d2", "gone", qid="a"), pair("q two", "d3", qid="b")]
    rows = training_examples(pairs, {"a": ["d4", "gone"]}, TEXTS)
    assert rows == [
        ("q one", TEXTS["d1"], [TEXTS["d4"]]),
        ("q one", TEXTS["d2"], [TEXTS["d4"]]),
        ("q two", TEXTS["d3"], []),
    ]
    with pytest.raises(TrainingDataError, match="ids must be the corpus's"):
        training_examples([pair("q", "gone")], {}, TEXTS)


def test_data_stats_are_flat_counts() -> None:
    merged = MergeStats(given={"labelled": 3, "synthetic": 2, "feedback": 0})
    merged.kept.update(labelled=3, synthetic=1)
    merged.duplicates = 1
    train, validation = many(3), many(4, start=3)
    _, feedback = feedback_pairs([rated("negative")])
    stats = data_stats(merged, train, validation, feedback=feedback, negatives={"q0": []})
    assert stats["pairs.labelled"] == 3 and stats["pairs.synthetic"] == 1
    assert stats["given.synthetic"] == 2 and stats["duplicates"] == 1
    assert stats["queries.train"] == 3 and stats["queries.validation"] == 1
    assert stats["feedback.skipped_negative"] == 1 and "synthetic.kept" not in stats
    assert stats["queries.without_negatives"] == 1
    assert all(isinstance(v, int) for v in stats.values())
