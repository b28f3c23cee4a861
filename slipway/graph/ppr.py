"""Graph retrieval: Personalized PageRank over the entity-chunk graph (as HippoRAG does).

The graph is bipartite: chunks and the entities they mention, an edge weighted by the mention
count times the entity's inverse chunk frequency (a rare entity links its few chunks more
strongly than a common one links its many). A question's entities are the seeds; the walk
restarts at them with probability ``1 - damping`` at every step, so the chunks it visits most
are those one or two entity hops away: the first page of a multi-hop question (it names the
seed) and the second (it shares an entity with the first).

PageRank is the solution of a sparse linear system, ``(I - d M) x = (1 - d) p``; the system's
LU factors (scipy's SuperLU) are computed once per graph snapshot and each query is two
triangular solves.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import splu

from slipway.graph.linking import split_entity_id

Hit = tuple[str, float]
GRAPH_DIR = "graph"
MAX_NAME_WORDS = 8  # the longest entity name looked up in a question's word n-grams
MIN_NAME_CHARS = 4  # shorter names ("he", "us") are not looked up as n-grams
_WORDS = re.compile(r"[\w'’-]+|[^\w\s]")  # noqa: RUF001 - typographic apostrophe


def word_form(text: str) -> str:
    """``text`` case-folded, as words and punctuation marks separated by one space."""
    return " ".join(_WORDS.findall(text.casefold()))


def name_index(names: Iterable[str]) -> dict[str, list[str]]:
    """Entity names (normalised, as ``entity_key`` makes them) by their word form, for
    :func:`names_in`; names shorter than MIN_NAME_CHARS or longer than MAX_NAME_WORDS words
    are left out."""
    index: dict[str, list[str]] = {}
    for name in names:
        form = word_form(name)
        if len(form) >= MIN_NAME_CHARS and form.count(" ") < MAX_NAME_WORDS:
            index.setdefault(form, []).append(name)
    return index


def names_in(text: str, index: Mapping[str, list[str]]) -> set[str]:
    """The names of ``index`` that occur in ``text`` as a run of whole words: each word
    n-gram of the text is looked up (a title or a name is found without NER, in time linear
    in the text, whatever the number of names)."""
    words = word_form(text).split(" ")
    found: set[str] = set()
    for start in range(len(words)):
        for end in range(start + 1, min(len(words), start + MAX_NAME_WORDS) + 1):
            found.update(index.get(" ".join(words[start:end]), ()))
    return found


@dataclass(frozen=True)
class EntityChunkGraph:
    """Chunks, entities and the mention counts between them (a snapshot for retrieval)."""

    chunk_ids: list[str]
    entity_ids: list[str]
    mentions: sp.csr_matrix  # (chunks, entities): how often a chunk mentions an entity

    @classmethod
    def from_mentions(
        cls, chunk_entities: Mapping[str, Mapping[str, int]], chunk_ids: Sequence[str]
    ) -> EntityChunkGraph:
        """The graph of ``chunk_entities`` (chunk id → entity id → count) over ``chunk_ids``
        (chunks without entities stay, unreachable)."""
        entity_ids = sorted({e for counts in chunk_entities.values() for e in counts})
        column = {e: i for i, e in enumerate(entity_ids)}
        rows, cols, counts = [], [], []
        for row, chunk in enumerate(chunk_ids):
            for entity, n in chunk_entities.get(chunk, {}).items():
                rows.append(row)
                cols.append(column[entity])
                counts.append(float(n))
        mentions = sp.csr_matrix(
            (counts, (rows, cols)), shape=(len(chunk_ids), len(entity_ids)), dtype=np.float64
        )
        return cls(list(chunk_ids), entity_ids, mentions)

    def save(self, directory: Path) -> None:
        """Write the snapshot into ``directory`` (``ids.json`` and ``mentions.npz``)."""
        directory.mkdir(parents=True, exist_ok=True)
        sp.save_npz(directory / "mentions.npz", self.mentions)
        (directory / "ids.json").write_text(
            json.dumps({"chunks": self.chunk_ids, "entities": self.entity_ids})
        )

    @classmethod
    def load(cls, directory: Path) -> EntityChunkGraph:
        """A snapshot written by :meth:`save`."""
        ids = json.loads((directory / "ids.json").read_text())
        mentions = sp.load_npz(directory / "mentions.npz").tocsr()
        return cls(ids["chunks"], ids["entities"], mentions)

    def keys(self) -> dict[str, list[int]]:
        """Entity columns by normalised name (an entity id's part after its type)."""
        out: dict[str, list[int]] = {}
        for column, entity in enumerate(self.entity_ids):
            out.setdefault(split_entity_id(entity)[1], []).append(column)
        return out


def entity_weights(mentions: sp.csr_matrix) -> np.ndarray:
    """Each entity's inverse chunk frequency, ``log(1 + chunks / chunks mentioning it)``."""
    chunks = mentions.shape[0]
    frequency = np.asarray((mentions > 0).sum(axis=0)).ravel()
    return np.log1p(chunks / np.maximum(frequency, 1))


class PersonalizedPageRank:
    """PPR from seed entities over a snapshot, factored once (see the module's text)."""

    def __init__(
        self,
        graph: EntityChunkGraph,
        damping: float = 0.5,
        lookup_types: Iterable[str] | None = None,
    ) -> None:
        """``lookup_types``: the entity types whose names are looked up in a question's words
        (e.g. page titles); ``None``: every type."""
        if not 0.0 < damping < 1.0:
            raise ValueError(f"damping must be between 0 and 1, not {damping}.")
        self.graph = graph
        self.damping = damping
        self.n_chunks, self.n_entities = graph.mentions.shape
        weighted = graph.mentions @ sp.diags(entity_weights(graph.mentions))
        adjacency = sp.bmat([[None, weighted], [weighted.T, None]], format="csc")
        out = np.asarray(adjacency.sum(axis=0)).ravel()  # each node's weighted degree
        # column-stochastic transitions (a node without edges keeps its mass: a self-loop)
        transitions = adjacency @ sp.diags(1.0 / np.where(out > 0, out, 1.0))
        transitions = transitions + sp.diags((out == 0).astype(np.float64))
        size = self.n_chunks + self.n_entities
        system = (sp.identity(size, format="csc") - damping * transitions).tocsc()
        self._lu = splu(system)
        self._keys = graph.keys()
        self._weights = entity_weights(graph.mentions)
        wanted = None if lookup_types is None else set(lookup_types)
        self.names = name_index(
            split_entity_id(e)[1]
            for e in graph.entity_ids
            if wanted is None or split_entity_id(e)[0] in wanted
        )

    def seed_columns(self, keys: Iterable[str]) -> list[int]:
        """The entity columns of the given normalised names (every type the name has)."""
        return sorted({c for key in keys for c in self._keys.get(key, [])})

    def seeds(self, text: str, keys: Iterable[str] = ()) -> dict[int, float]:
        """Seeds for a question: the entities named by ``keys`` (e.g. its NER mentions'
        names) and those whose names occur in ``text``, each weighted by its inverse chunk
        frequency (a rare name says more about where to go than a common one)."""
        columns = self.seed_columns({*keys, *names_in(text, self.names)})
        return {c: float(self._weights[c]) for c in columns}

    def scores(self, seeds: Mapping[int, float]) -> np.ndarray:
        """Visit probabilities of the chunks for a walk that restarts at ``seeds`` (entity
        column → weight); zeros without seeds."""
        if not seeds:
            return np.zeros(self.n_chunks)
        restart = np.zeros(self.n_chunks + self.n_entities)
        for column, weight in seeds.items():
            restart[self.n_chunks + column] += weight
        restart /= restart.sum()
        visits = self._lu.solve((1.0 - self.damping) * restart)
        return np.asarray(visits[: self.n_chunks])

    def search(self, seeds: Mapping[int, float], k: int) -> list[Hit]:
        """The ``k`` chunks visited most (only those reached at all)."""
        scores = self.scores(seeds)
        top = np.argsort(-scores, kind="stable")[:k]
        return [(self.graph.chunk_ids[i], float(scores[i])) for i in top if scores[i] > 0]
