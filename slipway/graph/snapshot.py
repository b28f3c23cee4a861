"""The entity-chunk graph of an index version, and the graph retriever that reads it.

An index version holds a snapshot of its graph (``<version>/graph/``): which entities each of
its chunks mentions and how often (spaCy NER, linked as the knowledge-graph update links them,
plus each chunk's page title as a ``PAGE`` entity: a Wikipedia-style page is about its title).
The snapshot is written with the version, before it is evaluated and published, so the graph a
query walks always belongs to the version it searches: the served searcher opens both from the
same directory and they are swapped together. A refresh carries the mentions of unchanged
documents over from the version it starts from and runs NER on new and changed ones only.

Entities named in one sentence are linked to each other too (entity-entity edges weighted by
their sentence count; measured in ``bench/multihop_links.py``).

The retriever (:class:`GraphRetriever`) seeds Personalized PageRank (``slipway.graph.ppr``) with
a question's entities (its NER mentions' normalised names, and page titles that occur in it
as whole words) and ranks chunks by visit probability.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from tqdm import tqdm

from slipway.documents.chunking import Chunk
from slipway.graph.extraction import (
    Mention,
    display_name,
    entity_key,
    extract_mentions,
    nlp_label,
    usable,
)
from slipway.graph.linking import link_mentions
from slipway.graph.ppr import GRAPH_DIR, EntityChunkGraph, PersonalizedPageRank

logger = logging.getLogger(__name__)

PAGE = "PAGE"  # the entity type of a page title
INFO_FILE = "snapshot.json"
LOOKUP_TYPES = (PAGE,)  # entity names looked up in a question's words (NER finds the rest)
DAMPING = 0.5  # HippoRAG's; 0.3-0.85 moved 2Wiki R@5 by less than 0.01
# entity-entity edges between entities named in one sentence, relative to chunk-entity edges:
# +0.013 R@5 and +0.024 all-gold@5 for hybrid + graph on 2Wiki at 0.3 (bench/multihop_links.py)
SENTENCE_WEIGHT = 0.3
_DISAMBIGUATION = re.compile(r"\s*\([^)]*\)\s*$")  # "Mercury (planet)" -> "Mercury"
Hit = tuple[str, float]


class SnapshotInfo(BaseModel):
    """What a snapshot holds and how it was made."""

    ner: str  # the spaCy pipeline (name-version) that extracted the mentions
    sentences: bool = False  # it records which entities each sentence names together
    chunks: int
    entities: int
    edges: int
    pairs: int = 0  # (chunk, entity pair) sentence links
    extracted: int  # chunks run through NER for this version
    carried: int  # chunks whose mentions came from the base version's snapshot
    seconds: float


def snapshot_dir(version_dir: Path) -> Path:
    """Where a version's graph snapshot lives."""
    return Path(version_dir) / GRAPH_DIR


def has_snapshot(version_dir: Path) -> bool:
    """Whether a version has a complete graph snapshot."""
    return (snapshot_dir(version_dir) / INFO_FILE).is_file()


def page_title(title: str) -> str:
    """A chunk's page title as an entity name (no "(disambiguation)" suffix, cleaned);
    empty when it cannot be one."""
    name = display_name(_DISAMBIGUATION.sub("", title.replace("_", " ")), PAGE)
    return name if usable(name) else ""


def sentence_nlp(nlp: Any) -> Any:
    """``nlp`` with sentence boundaries (a sentencizer first, unless it has a parser or one)."""
    if not {"parser", "senter", "sentencizer"} & set(nlp.pipe_names):
        nlp.add_pipe("sentencizer", first=True)
    return nlp


def chunk_entities(
    nlp: Any, chunks: Sequence[Chunk], batch: int = 256, progress: bool = True
) -> tuple[dict[str, dict[str, int]], dict[str, dict[tuple[str, str], int]]]:
    """Entity mention counts of each chunk (chunk id -> entity id -> count): NER mentions
    linked (``link_mentions``; surnames resolved within a document) and the page title; and
    per chunk, the pairs of entities named in one sentence, with their sentence counts
    (``nlp`` must split sentences: :func:`sentence_nlp`)."""
    counts: dict[str, dict[str, int]] = {}
    pairs: dict[str, dict[tuple[str, str], int]] = {}
    with tqdm(
        total=len(chunks),
        desc="Graph snapshot: NER",
        unit="chunk",
        disable=True if not progress or not chunks else None,
        mininterval=2.0,
    ) as bar:
        for start in range(0, len(chunks), batch):
            part = chunks[start : start + batch]
            mentions = extract_mentions(nlp, [(c.id, c.text) for c in part])
            mentions += [
                Mention(c.id, name, PAGE, "") for c in part if (name := page_title(c.title))
            ]
            linked = link_mentions(mentions, {c.id: c.doc_id for c in part})
            counts.update(linked.chunk_entities)
            together: dict[tuple[str, int], set[str]] = {}
            for mention, entity in zip(mentions, linked.mention_entity, strict=True):
                if mention.sentence >= 0:
                    together.setdefault((mention.chunk_id, mention.sentence), set()).add(entity)
            for (chunk, _), entities in together.items():
                named = sorted(entities)
                for i, a in enumerate(named):
                    for b in named[i + 1 :]:
                        seen = pairs.setdefault(chunk, {})
                        seen[(a, b)] = seen.get((a, b), 0) + 1
            bar.update(len(part))
    return counts, pairs


def _carried(base: EntityChunkGraph, chunk_ids: Iterable[str]) -> dict[str, dict[str, int]]:
    """The base snapshot's mention counts of ``chunk_ids`` (those it has)."""
    row_of = {c: i for i, c in enumerate(base.chunk_ids)}
    mentions = base.mentions.tocsr()
    out: dict[str, dict[str, int]] = {}
    for chunk in chunk_ids:
        row = row_of[chunk]
        start, end = mentions.indptr[row], mentions.indptr[row + 1]
        out[chunk] = {
            base.entity_ids[col]: int(n)
            for col, n in zip(mentions.indices[start:end], mentions.data[start:end], strict=True)
        }
    return out


def build_snapshot(
    version_dir: Path,
    chunks: Sequence[Chunk],
    nlp: Any,
    fresh_docs: set[str] | None = None,
    base_dir: Path | None = None,
    progress: bool = True,
) -> SnapshotInfo:
    """Write the graph snapshot of a version of ``chunks`` into ``version_dir``. Chunks of
    documents not in ``fresh_docs`` (``None``: all are fresh) whose mentions the base version's
    snapshot (``base_dir``) holds, extracted by the same NER pipeline, are carried over; the
    rest go through NER."""
    started = time.perf_counter()
    nlp = sentence_nlp(nlp)
    ner = nlp_label(nlp)
    carry: list[str] = []
    base: EntityChunkGraph | None = None
    if base_dir is not None and has_snapshot(base_dir) and fresh_docs is not None:
        info = SnapshotInfo.model_validate_json((snapshot_dir(base_dir) / INFO_FILE).read_text())
        if info.ner == ner and info.sentences:
            base = EntityChunkGraph.load(snapshot_dir(base_dir))
            known = set(base.chunk_ids)
            carry = [c.id for c in chunks if c.doc_id not in fresh_docs and c.id in known]
        else:
            logger.info("graph snapshot: NER or links changed since %s, extracting all", base_dir)
    carried = set(carry)
    todo = [c for c in chunks if c.id not in carried]
    counts = _carried(base, carry) if base is not None else {}
    pairs = base.chunk_pairs(carry) if base is not None else {}
    fresh_counts, fresh_pairs = chunk_entities(nlp, todo, progress=progress)
    counts.update(fresh_counts)
    pairs.update(fresh_pairs)
    graph = EntityChunkGraph.from_mentions(counts, [c.id for c in chunks], pairs)
    target = snapshot_dir(version_dir)
    graph.save(target)
    info = SnapshotInfo(
        ner=ner,
        sentences=True,
        chunks=len(chunks),
        entities=len(graph.entity_ids),
        edges=int(graph.mentions.nnz),
        pairs=len(graph.pairs),
        extracted=len(todo),
        carried=len(carry),
        seconds=round(time.perf_counter() - started, 3),
    )
    (target / INFO_FILE).write_text(info.model_dump_json(indent=1))  # last: marks it complete
    logger.info(
        "graph snapshot: %d chunks (%d through NER, %d carried), %d entities, %d edges, %.1fs",
        info.chunks,
        info.extracted,
        info.carried,
        info.entities,
        info.edges,
        info.seconds,
    )
    return info


class GraphRetriever:
    """Graph retrieval over one snapshot: a question's entities seed Personalized PageRank,
    chunks rank by visit probability. Thread-safe (NER runs under a lock; the PageRank
    solves release the GIL)."""

    def __init__(
        self,
        graph: EntityChunkGraph,
        nlp: Any,
        damping: float = DAMPING,
        lookup_types: Iterable[str] | None = LOOKUP_TYPES,
        sentence_weight: float = SENTENCE_WEIGHT,
    ) -> None:
        self.graph = graph
        self.nlp = nlp
        self.ppr = PersonalizedPageRank(
            graph, damping=damping, lookup_types=lookup_types, sentence_weight=sentence_weight
        )
        self._ner = threading.Lock()

    @classmethod
    def load(cls, version_dir: Path, nlp: Any, **options: Any) -> GraphRetriever:
        """The retriever of a version's snapshot (a clear error when it has none)."""
        if not has_snapshot(version_dir):
            raise FileNotFoundError(
                f"{version_dir} has no graph snapshot; refresh the index with the graph "
                "snapshot on (index.graph: true) to build one."
            )
        return cls(EntityChunkGraph.load(snapshot_dir(version_dir)), nlp, **options)

    def seeds(self, text: str) -> dict[int, float]:
        """Seed entities of a question (column -> weight): see the module's text."""
        with self._ner:
            mentions = extract_mentions(self.nlp, [("question", text)])
        return self.ppr.seeds(text, {entity_key(m.surface, m.type) for m in mentions})

    def search(self, text: str, k: int) -> list[Hit]:
        """The ``k`` chunks the walk from the question's entities visits most."""
        return self.ppr.search(self.seeds(text), k)

    def search_many(self, texts: Sequence[str], k: int) -> list[list[Hit]]:
        """:meth:`search` for several questions (the hybrid searcher's graph ranking)."""
        return [self.search(text, k) for text in texts]

    def seed_names(self, text: str) -> list[str]:
        """The entity ids a question seeds (for traces and debugging)."""
        return [self.graph.entity_ids[c] for c in sorted(self.seeds(text))]
