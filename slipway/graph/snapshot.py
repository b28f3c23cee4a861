"""The entity-chunk graph of an index version, and the graph retriever that reads it.

An index version holds a snapshot of its graph (``<version>/graph/``): which entities each of
its chunks mentions and how often (spaCy NER, linked as the knowledge-graph update links them,
plus each chunk's page title as a ``PAGE`` entity: a Wikipedia-style page is about its title).
The snapshot is written with the version, before it is evaluated and published, so the graph a
query walks always belongs to the version it searches: the served searcher opens both from the
same directory and they are swapped together. A refresh carries the mentions of unchanged
documents over from the version it starts from and runs NER on new and changed ones only.

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
DAMPING = 0.5  # chosen on 2WikiMultihopQA (bench/multihop.py --damping)
_DISAMBIGUATION = re.compile(r"\s*\([^)]*\)\s*$")  # "Mercury (planet)" -> "Mercury"
Hit = tuple[str, float]


class SnapshotInfo(BaseModel):
    """What a snapshot holds and how it was made."""

    ner: str  # the spaCy pipeline (name-version) that extracted the mentions
    chunks: int
    entities: int
    edges: int
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


def chunk_entities(
    nlp: Any, chunks: Sequence[Chunk], batch: int = 256, progress: bool = True
) -> dict[str, dict[str, int]]:
    """Entity mention counts of each chunk (chunk id -> entity id -> count): NER mentions
    linked (``link_mentions``; surnames resolved within a document) and the page title."""
    out: dict[str, dict[str, int]] = {}
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
            out.update(linked.chunk_entities)
            bar.update(len(part))
    return out


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
    ner = nlp_label(nlp)
    carry: list[str] = []
    base: EntityChunkGraph | None = None
    if base_dir is not None and has_snapshot(base_dir) and fresh_docs is not None:
        info = SnapshotInfo.model_validate_json((snapshot_dir(base_dir) / INFO_FILE).read_text())
        if info.ner == ner:
            base = EntityChunkGraph.load(snapshot_dir(base_dir))
            known = set(base.chunk_ids)
            carry = [c.id for c in chunks if c.doc_id not in fresh_docs and c.id in known]
        else:
            logger.info("graph snapshot: NER changed (%s -> %s), extracting all", info.ner, ner)
    carried = set(carry)
    todo = [c for c in chunks if c.id not in carried]
    counts = _carried(base, carry) if base is not None else {}
    counts.update(chunk_entities(nlp, todo, progress=progress))
    graph = EntityChunkGraph.from_mentions(counts, [c.id for c in chunks])
    target = snapshot_dir(version_dir)
    graph.save(target)
    info = SnapshotInfo(
        ner=ner,
        chunks=len(chunks),
        entities=len(graph.entity_ids),
        edges=int(graph.mentions.nnz),
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
    ) -> None:
        self.graph = graph
        self.nlp = nlp
        self.ppr = PersonalizedPageRank(graph, damping=damping, lookup_types=lookup_types)
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
