"""Training data for the retriever and the re-ranker: labelled pairs, synthetic queries kept only
when round-trip consistent, and rated answers; merged, de-duplicated, split by query into train
and a validation set frozen across runs, and mined for hard negatives.

Ids are those of the caller's retrieval unit (documents, or chunks): ``positives``, the keys of
``passages`` and ``texts``, and what ``retrieve`` ranks must all name the same things."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import re
import tempfile
import unicodedata
import zlib
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

from pydantic import BaseModel, Field, ValidationError
from tqdm.auto import tqdm

from slipway.prompts import SOURCES_DIR, Prompt
from slipway.retrieval.metrics import read_qrels

if TYPE_CHECKING:
    from slipway.evaluation.judge import ChatModel

logger = logging.getLogger(__name__)

Source = Literal["labelled", "synthetic", "feedback"]
SOURCES: tuple[Source, ...] = ("labelled", "synthetic", "feedback")
Retrieve = Callable[[list[str]], list[list[str]]]

SYNTHETIC_PROMPT_FILE = SOURCES_DIR / "synthetic_query.yaml"
PASSAGE_VARIABLE = "passage"
# Word-set Jaccard at or above which two queries are the same question reworded.
QUERY_NEAR_DUPLICATE = 0.8
# Word-trigram Jaccard at or above which a retrieved text repeats a positive (not a negative).
DOC_NEAR_DUPLICATE = 0.6
DOC_SHINGLE = 3
# A generated question is plausible within these bounds.
MIN_QUERY_WORDS, MAX_QUERY_WORDS, MAX_QUERY_CHARS = 3, 32, 300

_PUNCTUATION = re.compile(r"[^\w\s]+")
_LABEL = re.compile(
    r"^\s*(?:(?:\d{1,2}[.)]|[-*•])\s+)?(?:(?:search\s+)?(?:question|query|q)\s*\d*\s*[:.)-]\s*)?",
    re.IGNORECASE,
)
_QUOTES = "\"'`*_ \u201c\u201d\u2018\u2019\u00ab\u00bb"  # also typographic quotes


class TrainingDataError(ValueError):
    """Training data is missing or malformed; the message says what to change."""


class Pair(BaseModel):
    """A query and the ids it should retrieve, with where it came from."""

    query_id: str = Field(min_length=1)
    query: str = Field(min_length=1)
    positives: list[str] = Field(min_length=1)
    source: Source


class TrainingExample(NamedTuple):
    """One row for the trainers: a query, one positive text and the hard negative texts."""

    query: str
    positive: str
    negatives: list[str]


class FeedbackStats(BaseModel):
    """What became of the rated answers."""

    rows: int = 0
    kept: int = 0
    skipped_negative: int = 0  # a negative rating without the chunks that were expected
    skipped_empty: int = 0  # no question, or no chunk cited or expected


class SyntheticStats(BaseModel):
    """What became of the generated questions (``generated`` counts the generator's replies:
    ``empty + not_round_trip + near_duplicate + kept == generated``)."""

    passages: int = 0
    generated: int = 0
    empty: int = 0
    not_round_trip: int = 0
    near_duplicate: int = 0
    kept: int = 0


def _per_source() -> dict[str, int]:
    """A zero count for each source."""
    return dict.fromkeys(SOURCES, 0)


class MergeStats(BaseModel):
    """Pairs given and kept per source, and the duplicates dropped."""

    given: dict[str, int] = Field(default_factory=_per_source)
    kept: dict[str, int] = Field(default_factory=_per_source)
    duplicates: int = 0


# --- text keys and similarity ---------------------------------------------------------------


def normalize(text: str) -> str:
    """``text`` casefolded, without punctuation and with single spaces (what dedupe compares)."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    return " ".join(_PUNCTUATION.sub(" ", folded).split())


def query_key(text: str) -> str:
    """A stable short digest of the normalized query."""
    return hashlib.sha256(normalize(text).encode()).hexdigest()[:16]


def shingles(text: str, size: int = 1) -> frozenset[str]:
    """The normalized text's runs of ``size`` words (its words when it is shorter)."""
    words = normalize(text).split()
    if len(words) <= size:
        return frozenset([" ".join(words)] if words else [])
    return frozenset(" ".join(words[i : i + size]) for i in range(len(words) - size + 1))


def jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    """Size of the intersection over size of the union (0 for two empty sets)."""
    union = len(a | b)
    return len(a & b) / union if union else 0.0


class NearDuplicates:
    """Texts kept so far; a new one is refused when its shingle Jaccard similarity to a kept one
    reaches ``threshold``. Prefix filtering (AllPairs) keeps it from comparing against all."""

    def __init__(self, threshold: float = QUERY_NEAR_DUPLICATE, size: int = 1) -> None:
        if not 0 < threshold <= 1:
            raise ValueError(f"near-duplicate threshold must be in (0, 1], got {threshold}.")
        self.threshold, self.size = threshold, size
        self._sets: list[frozenset[str]] = []
        self._index: dict[str, list[int]] = defaultdict(list)

    def add(self, text: str) -> bool:
        """Keep ``text`` unless it near-duplicates a kept one; True when it was kept."""
        tokens = shingles(text, self.size)
        prefix = self._prefix(tokens)
        compared: set[int] = set()
        for token in prefix:
            for i in self._index.get(token, ()):
                if i not in compared:
                    compared.add(i)
                    if jaccard(tokens, self._sets[i]) >= self.threshold:
                        return False
        self._sets.append(tokens)
        for token in prefix:
            self._index[token].append(len(self._sets) - 1)
        return True

    def _prefix(self, tokens: frozenset[str]) -> list[str]:
        """The tokens that any set similar enough must share one of, in a fixed global order."""
        ordered = sorted(tokens, key=lambda t: (zlib.crc32(t.encode()), t))
        overlap = math.ceil(self.threshold * len(ordered) - 1e-9)
        return ordered[: len(ordered) - overlap + 1]


# --- labelled pairs -------------------------------------------------------------------------


def _jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """The JSON objects of a JSONL file with their line numbers (blank lines skipped)."""
    try:
        handle = path.open(encoding="utf-8")
    except FileNotFoundError as exc:
        raise TrainingDataError(f"No file {path}.") from exc
    with handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise TrainingDataError(
                    f"{path}:{number}: not JSON ({exc.msg}); write one JSON object per line."
                ) from exc
            if not isinstance(row, dict):
                raise TrainingDataError(f"{path}:{number}: expected a JSON object per line.")
            yield number, row


def labelled_pairs(path: Path, split: str = "train") -> list[Pair]:
    """Labelled pairs from a BEIR folder (``queries.jsonl`` and ``qrels/<split>.tsv``, positives
    scored above 0) or a JSONL file of ``{"query" (or "question"), "doc_ids", "id"?}`` rows."""
    if path.is_dir():
        pairs = _beir_pairs(path, split)
    elif path.is_file():
        pairs = _jsonl_pairs(path)
    else:
        raise TrainingDataError(
            f"No labelled data at {path}: give a BEIR folder (queries.jsonl and "
            f"qrels/{split}.tsv) or a JSONL file of {{'query': ..., 'doc_ids': [...]}} rows."
        )
    if not pairs:
        raise TrainingDataError(f"{path} holds no query with a relevant document.")
    return pairs


def _beir_pairs(root: Path, split: str) -> list[Pair]:
    """The judged queries of a BEIR folder as pairs, in qrels order."""
    qrels_path, queries_path = root / "qrels" / f"{split}.tsv", root / "queries.jsonl"
    for needed in (qrels_path, queries_path):
        if not needed.is_file():
            splits = sorted(p.stem for p in (root / "qrels").glob("*.tsv"))
            raise TrainingDataError(
                f"No {needed}: a BEIR folder needs queries.jsonl and qrels/<split>.tsv "
                f"(split {split!r}; this folder has {splits or 'no qrels'})."
            )
    try:
        qrels = read_qrels(qrels_path)
    except (KeyError, ValueError) as exc:
        raise TrainingDataError(
            f"{qrels_path}: expected tab-separated rows under the header "
            f"'query-id corpus-id score' with integer scores ({exc!r})."
        ) from exc
    texts: dict[str, str] = {}
    for number, row in _jsonl(queries_path):
        if "_id" not in row or not isinstance(row.get("text"), str):
            raise TrainingDataError(f"{queries_path}:{number}: a query needs '_id' and 'text'.")
        texts[str(row["_id"])] = row["text"]
    unknown = [q for q in qrels if q not in texts]
    if unknown:
        logger.warning("%d judged queries have no text in %s", len(unknown), queries_path)
    return [
        Pair(query_id=q, query=texts[q], positives=list(docs), source="labelled")
        for q, docs in qrels.items()
        if q in texts and texts[q].strip()
    ]


def _jsonl_pairs(path: Path) -> list[Pair]:
    """``{"query", "doc_ids", "id"?}`` rows as pairs."""
    pairs = []
    for number, row in _jsonl(path):
        query, doc_ids = row.get("query", row.get("question")), row.get("doc_ids")
        if not isinstance(query, str) or not query.strip():
            raise TrainingDataError(f"{path}:{number}: 'query' must be a non-empty string.")
        if not isinstance(doc_ids, list) or not doc_ids or not all(doc_ids):
            raise TrainingDataError(
                f"{path}:{number}: 'doc_ids' must be a non-empty list of document ids."
            )
        query_id = str(row["id"]) if row.get("id") is not None else f"labelled-{query_key(query)}"
        pairs.append(
            Pair(
                query_id=query_id,
                query=query,
                positives=list(dict.fromkeys(map(str, doc_ids))),
                source="labelled",
            )
        )
    return pairs


# --- feedback -------------------------------------------------------------------------------


def read_feedback(path: Path) -> list[dict[str, Any]]:
    """The rows ``slipway feedback export`` wrote to ``path`` (JSONL)."""
    rows = []
    for number, row in _jsonl(path):
        if row.get("rating") not in ("positive", "negative"):
            raise TrainingDataError(
                f"{path}:{number}: 'rating' must be 'positive' or 'negative'; write the file "
                "with `slipway feedback export` (without --qa-set)."
            )
        rows.append(row)
    return rows


def chunk_doc(chunk_id: str) -> str:
    """The document id of a chunk id ``doc#n``."""
    return chunk_id.rsplit("#", 1)[0]


def feedback_pairs(rows: Iterable[Mapping[str, Any]]) -> tuple[list[Pair], FeedbackStats]:
    """Rated answers as pairs: a positive rating's documents are those of the chunks expected,
    else cited; a negative rating gives a pair only when the expected chunks were given."""
    pairs: list[Pair] = []
    stats = FeedbackStats()
    for number, row in enumerate(rows, 1):
        stats.rows += 1
        rating = row.get("rating")
        if rating not in ("positive", "negative"):
            raise TrainingDataError(
                f"Feedback row {number}: 'rating' must be 'positive' or 'negative', got {rating!r}."
            )
        expected = row.get("expected_chunk_ids") or []
        if rating == "negative" and not expected:
            stats.skipped_negative += 1
            continue
        chunks = expected or row.get("citations") or []
        question = row.get("question")
        if not isinstance(question, str) or not question.strip() or not chunks:
            stats.skipped_empty += 1
            continue
        name = row.get("request_id") or row.get("trace_id") or query_key(question)
        pairs.append(
            Pair(
                query_id=f"feedback-{name}",
                query=question,
                positives=list(dict.fromkeys(chunk_doc(str(c)) for c in chunks)),
                source="feedback",
            )
        )
        stats.kept += 1
    return pairs, stats


# --- synthetic queries ----------------------------------------------------------------------


def chat_ask(model: ChatModel, max_tokens: int = 48) -> Callable[[str], str]:
    """``model`` (the served generator or an OpenAI-compatible endpoint) as an ``ask``."""

    def ask(prompt: str) -> str:
        return model.ask(prompt, max_tokens, None)

    return ask


def clean_question(reply: str) -> str | None:
    """The question in a generator's reply (its first line, without labels, numbering and
    quotes, up to its first '?'), or None when that is not a plausible search question."""
    for line in reply.strip().splitlines():
        text = _LABEL.sub("", line.strip().strip(_QUOTES), count=1).strip().strip(_QUOTES)
        if not text or text.endswith(":"):
            continue  # a bare label or a preamble ("Here is a question:")
        if "?" in text:
            text = text[: text.index("?") + 1].strip(_QUOTES)
        words = len(text.split())
        plausible = MIN_QUERY_WORDS <= words <= MAX_QUERY_WORDS and len(text) <= MAX_QUERY_CHARS
        return text if plausible and any(c.isalpha() for c in text) else None
    return None


def sample_ids(ids: Iterable[str], count: int | None, seed: int) -> list[str]:
    """``count`` of ``ids`` drawn with ``seed`` (all when None or more), sorted."""
    ordered = sorted(set(ids))
    if count is None or count >= len(ordered):
        return ordered
    if count < 0:
        raise ValueError(f"A sample size must not be negative, got {count}.")
    return sorted(random.Random(seed).sample(ordered, count))


def _map(ask: Callable[[str], str], prompts: list[str], workers: int) -> list[str]:
    """``ask`` over ``prompts`` in order, ``workers`` at a time."""
    if workers <= 1:
        return [ask(p) for p in prompts]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(ask, prompts))


def _ranked(retrieve: Retrieve, queries: list[str]) -> list[list[str]]:
    """``retrieve(queries)``, checked to rank once per query."""
    ranked = retrieve(queries)
    if len(ranked) != len(queries):
        raise TrainingDataError(
            f"retrieve returned {len(ranked)} rankings for {len(queries)} queries; it must "
            "return one ranked id list per query, in order."
        )
    return ranked


def synthetic_pairs(
    passages: Mapping[str, str],
    ask: Callable[[str], str],
    retrieve: Retrieve,
    prompt: Prompt,
    k: int = 10,
    per_passage: int = 1,
    max_passages: int | None = None,
    seed: int = 0,
    max_passage_chars: int = 2000,
    near_duplicate: float = QUERY_NEAR_DUPLICATE,
    batch_size: int = 32,
    workers: int = 1,
    progress: bool = True,
) -> tuple[list[Pair], SyntheticStats]:
    """Questions the generator writes for (a seeded sample of) ``passages``, ``per_passage``
    asks each, kept when plausible, round-trip consistent (the passage is in the top ``k`` that
    ``retrieve`` ranks for it) and not a near-duplicate of a question kept before."""
    if PASSAGE_VARIABLE not in prompt.variables:
        raise TrainingDataError(
            f"Prompt {prompt.ref} must contain {{{{{PASSAGE_VARIABLE}}}}} (see "
            f"{SYNTHETIC_PROMPT_FILE.name}); it uses {sorted(prompt.variables)}."
        )
    if k < 1 or per_passage < 1 or batch_size < 1:
        raise ValueError("k, per_passage and batch_size must be at least 1.")
    chosen = sample_ids(passages, max_passages, seed)
    stats, kept = SyntheticStats(passages=len(chosen)), NearDuplicates(near_duplicate)
    pairs: list[Pair] = []
    with tqdm(
        total=len(chosen), desc="synthetic queries", unit="passage", disable=not progress
    ) as bar:
        for start in range(0, len(chosen), batch_size):
            batch = [pid for pid in chosen[start : start + batch_size] for _ in range(per_passage)]
            fills = [
                prompt.format(**{PASSAGE_VARIABLE: passages[pid][:max_passage_chars]})
                for pid in batch
            ]
            replies = _map(ask, fills, workers)
            stats.generated += len(replies)
            found = [
                (pid, q) for pid, r in zip(batch, replies, strict=True) if (q := clean_question(r))
            ]
            stats.empty += len(replies) - len(found)
            ranked = _ranked(retrieve, [q for _, q in found]) if found else []
            for (pid, query), ids in zip(found, ranked, strict=True):
                if pid not in ids[:k]:
                    stats.not_round_trip += 1
                elif not kept.add(query):
                    stats.near_duplicate += 1
                else:
                    stats.kept += 1
                    pairs.append(
                        Pair(
                            query_id=f"synthetic-{query_key(query)}",
                            query=query,
                            positives=[pid],
                            source="synthetic",
                        )
                    )
            bar.update(len(batch) // per_passage)
    return pairs, stats


# --- merge and split ------------------------------------------------------------------------


def merge(*groups: Sequence[Pair]) -> tuple[list[Pair], MergeStats]:
    """The pairs of all groups, one per normalized query: the first one's id, text and source,
    with the positives of all its duplicates."""
    stats = MergeStats()
    by_key: dict[str, Pair] = {}
    for pair in (p for group in groups for p in group):
        stats.given[pair.source] += 1
        key = normalize(pair.query)
        first = by_key.get(key)
        if first is None:
            by_key[key] = pair.model_copy(update={"positives": list(pair.positives)})
            stats.kept[pair.source] += 1
            continue
        stats.duplicates += 1
        first.positives[:] = dict.fromkeys([*first.positives, *pair.positives])
    return list(by_key.values()), stats


def _point(seed: int, query: str) -> float:
    """A stable point in [0, 1) for ``query`` under ``seed``."""
    digest = hashlib.sha256(f"{seed}:{normalize(query)}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split(
    pairs: Sequence[Pair],
    validation_fraction: float = 0.2,
    seed: int = 0,
    frozen: Path | None = None,
) -> tuple[list[Pair], list[Pair]]:
    """Train and validation pairs, split by query. When ``frozen`` exists its pairs ARE the
    validation set (runs stay comparable) and only other queries train; otherwise each query
    falls by a stable hash of ``seed`` and its text, and ``frozen`` (if given) is written."""
    if not 0 <= validation_fraction < 1:
        raise ValueError(f"validation_fraction must be in [0, 1), got {validation_fraction}.")
    if frozen is not None and frozen.is_file():
        validation = read_frozen(frozen, validation_fraction, seed)
        held = {normalize(p.query) for p in validation}
        return [p for p in pairs if normalize(p.query) not in held], validation
    points = [_point(seed, p.query) for p in pairs]
    chosen = {i for i, x in enumerate(points) if x < validation_fraction}
    if not chosen and validation_fraction > 0 and len(pairs) > 1:
        chosen = {min(range(len(pairs)), key=points.__getitem__)}  # at least one to validate on
    train = [p for i, p in enumerate(pairs) if i not in chosen]
    validation = [p for i, p in enumerate(pairs) if i in chosen]
    if frozen is not None:
        write_frozen(frozen, validation, validation_fraction, seed)
    return train, validation


def write_frozen(path: Path, validation: Sequence[Pair], fraction: float, seed: int) -> Path:
    """Write the validation set to ``path`` atomically (a temp file renamed over it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {
        "seed": seed,
        "validation_fraction": fraction,
        "pairs": [p.model_dump() for p in validation],
    }
    with tempfile.NamedTemporaryFile(
        "w", encoding="utf-8", dir=path.parent, prefix=f".{path.name}.", delete=False
    ) as handle:
        json.dump(body, handle, indent=1)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(handle.name, path)
    return path


def read_frozen(path: Path, fraction: float, seed: int) -> list[Pair]:
    """The frozen validation pairs at ``path``, drawn with the same ``fraction`` and ``seed``."""
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
        pairs = [Pair.model_validate(p) for p in body["pairs"]]
        drawn = (float(body["validation_fraction"]), int(body["seed"]))
    except (json.JSONDecodeError, KeyError, TypeError, ValidationError) as exc:
        raise TrainingDataError(
            f"{path} is not a frozen validation set ({exc}); restore it, or delete it to draw a "
            "new one (runs before and after are then not comparable)."
        ) from exc
    if drawn != (fraction, seed):
        raise TrainingDataError(
            f"{path} was drawn with validation_fraction={drawn[0]}, seed={drawn[1]}, not "
            f"{fraction}, {seed}: pass those, or delete {path} to draw a new validation set "
            "(runs before and after are then not comparable)."
        )
    return pairs


def split_ids(
    ids: Sequence[str], fraction: float = 0.5, seed: int = 0
) -> tuple[list[str], list[str]]:
    """``ids`` split into the rest and a seeded draw of ``round(fraction * n)`` held out, each
    in the given order (e.g. Cranfield's judged queries 50/50: train on one, evaluate on the
    other)."""
    if not 0 <= fraction <= 1:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}.")
    unique = list(dict.fromkeys(ids))
    held = set(random.Random(seed).sample(sorted(unique), round(fraction * len(unique))))
    return [i for i in unique if i not in held], [i for i in unique if i in held]


# --- hard negatives and training rows -------------------------------------------------------


def mine_hard_negatives(
    pairs: Sequence[Pair],
    retrieve: Retrieve,
    texts: Mapping[str, str],
    per_query: int = 4,
    depth: int = 30,
    skip_top: int = 0,
    near_duplicate: float = DOC_NEAR_DUPLICATE,
    batch_size: int = 64,
    progress: bool = True,
) -> dict[str, list[str]]:
    """Up to ``per_query`` negative ids per query id: the top ``depth`` that ``retrieve`` ranks,
    less the positives, the first ``skip_top`` others (likely unjudged positives), ids without
    a text, and texts whose word-trigram Jaccard to a positive's reaches ``near_duplicate``."""
    grams: dict[str, frozenset[str]] = {}

    def gram(doc: str) -> frozenset[str]:
        if doc not in grams:
            grams[doc] = shingles(texts[doc], DOC_SHINGLE)
        return grams[doc]

    negatives: dict[str, list[str]] = {}
    with tqdm(total=len(pairs), desc="hard negatives", unit="query", disable=not progress) as bar:
        for start in range(0, len(pairs), batch_size):
            batch = pairs[start : start + batch_size]
            for pair, ranked in zip(
                batch, _ranked(retrieve, [p.query for p in batch]), strict=True
            ):
                positives = [gram(d) for d in pair.positives if d in texts]
                others = [d for d in dict.fromkeys(ranked[:depth]) if d not in pair.positives]
                negatives[pair.query_id] = [
                    d
                    for d in others[skip_top:]
                    if d in texts and all(jaccard(gram(d), p) < near_duplicate for p in positives)
                ][:per_query]
            bar.update(len(batch))
    return negatives


def training_examples(
    pairs: Sequence[Pair], negatives: Mapping[str, Sequence[str]], texts: Mapping[str, str]
) -> list[TrainingExample]:
    """One row per (query, positive with a text): the query, the positive's text and its
    query's negative texts."""
    rows, missing = [], 0
    for pair in pairs:
        negative_texts = [texts[d] for d in negatives.get(pair.query_id, ()) if d in texts]
        for doc in pair.positives:
            if doc not in texts:
                missing += 1
                continue
            rows.append(TrainingExample(pair.query, texts[doc], negative_texts))
    if missing:
        logger.warning("%d positives have no text in the corpus; left out", missing)
    if pairs and not rows:
        raise TrainingDataError(
            "No positive of the training pairs is in the corpus: the pairs' document ids must "
            "be the corpus's (check the ids in qrels or doc_ids against the indexed documents)."
        )
    return rows


def data_stats(
    merged: MergeStats,
    train: Sequence[Pair],
    validation: Sequence[Pair],
    synthetic: SyntheticStats | None = None,
    feedback: FeedbackStats | None = None,
    negatives: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, int]:
    """Flat counts of the training data, named for MLflow metrics."""
    stats = {f"pairs.{source}": merged.kept[source] for source in SOURCES}
    stats |= {f"given.{source}": merged.given[source] for source in SOURCES}
    stats |= {
        "duplicates": merged.duplicates,
        "queries.train": len(train),
        "queries.validation": len(validation),
        "positives.train": sum(len(p.positives) for p in train),
        "positives.validation": sum(len(p.positives) for p in validation),
    }
    for name, part in (("synthetic", synthetic), ("feedback", feedback)):
        if part is not None:
            stats |= {f"{name}.{key}": int(value) for key, value in part.model_dump().items()}
    if negatives is not None:
        stats["negatives"] = sum(len(n) for n in negatives.values())
        stats["queries.without_negatives"] = sum(1 for n in negatives.values() if not n)
    return stats
