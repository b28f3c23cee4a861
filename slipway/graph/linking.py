"""Entity linking: aliases merged into one entity per (normalised name, type); same-name
entities of different types told apart by NER label, then by context embedding."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from slipway.graph.extraction import Mention, display_name, entity_key

EmbedFn = Callable[[Sequence[str]], np.ndarray]
# A mention moves to another type only when its context is this much closer (cosine) to
# that type's mentions than to the other mentions of its own label.
CONTEXT_MARGIN = 0.05


def entity_id(entity_type: str, key: str) -> str:
    """The graph id of an entity: its type and normalised name (readable, stable)."""
    return f"{entity_type}:{key}"


def split_entity_id(eid: str) -> tuple[str, str]:
    """``(type, normalised name)`` of an entity id."""
    kind, _, key = eid.partition(":")
    return kind, key


@dataclass
class StoredContext:
    """What the graph already knows about an entity's contexts (a running mean)."""

    mean: np.ndarray
    count: int


@dataclass
class EntityUpdate:
    """Everything a refresh adds to one entity."""

    id: str
    type: str
    key: str
    names: Counter[str] = field(default_factory=Counter)
    mentions: int = 0
    context_sum: np.ndarray | None = None
    context_count: int = 0

    @property
    def name(self) -> str:
        """The most frequent cleaned surface form (ties: alphabetical)."""
        return min(self.names.items(), key=lambda item: (-item[1], item[0]))[0]

    @property
    def aliases(self) -> list[str]:
        """Every cleaned surface form seen, sorted."""
        return sorted(self.names)


@dataclass
class LinkResult:
    """Linked entities; per chunk, how often each entity is mentioned there; per mention, its
    entity and (for ambiguous names) its context vector."""

    entities: dict[str, EntityUpdate]
    chunk_entities: dict[str, dict[str, int]]
    mention_entity: list[str]
    vectors: dict[int, np.ndarray]
    reassigned: int = 0


def _resolve_surnames(keys: list[tuple[str, str]], doc_of: list[str]) -> list[tuple[str, str]]:
    """A one-word PERSON name that is the first or last word of exactly one full PERSON name in
    the same document is that person ("Lay" -> "kenneth lay")."""
    full: dict[str, set[str]] = defaultdict(set)
    for (key, kind), doc in zip(keys, doc_of, strict=True):
        if kind == "PERSON" and " " in key:
            full[doc].add(key)
    resolved = []
    for (key, kind), doc in zip(keys, doc_of, strict=True):
        if kind == "PERSON" and " " not in key:
            matches = [f for f in full[doc] if f.split()[-1] == key or f.split()[0] == key]
            if len(matches) == 1:
                key = matches[0]
        resolved.append((key, kind))
    return resolved


def _unit(vector: np.ndarray) -> np.ndarray:
    return vector / max(float(np.linalg.norm(vector)), 1e-12)


def _disambiguate(
    keys: list[tuple[str, str]],
    vectors: np.ndarray,
    rows: list[int],
    stored: Mapping[str, StoredContext],
) -> list[str]:
    """New types for the mentions ``rows`` of one ambiguous name, by context; ``stored`` holds
    the graph's context means of that name, by type."""
    sums: dict[str, np.ndarray] = defaultdict(lambda: np.zeros(vectors.shape[1], np.float32))
    counts: Counter[str] = Counter()
    for kind, ctx in stored.items():
        sums[kind] += ctx.mean * ctx.count
        counts[kind] += ctx.count
    for row, r in enumerate(rows):
        sums[keys[r][1]] += vectors[row]
        counts[keys[r][1]] += 1
    chosen = []
    for row, r in enumerate(rows):
        own = keys[r][1]
        own_count = counts[own] - 1
        if own_count == 0:  # no other evidence for its own label: trust the label
            chosen.append(own)
            continue
        scores = {own: float(_unit(sums[own] - vectors[row]) @ vectors[row])}
        for kind in counts:
            if kind != own and counts[kind]:
                scores[kind] = float(_unit(sums[kind]) @ vectors[row])
        best = max(scores, key=lambda kind: scores[kind])
        chosen.append(best if scores[best] - scores[own] > CONTEXT_MARGIN else own)
    return chosen


def link_mentions(
    mentions: Sequence[Mention],
    doc_of: Mapping[str, str],
    stored_types: Mapping[str, set[str]] | None = None,
    stored_contexts: Mapping[str, StoredContext] | None = None,
    embed: EmbedFn | None = None,
) -> LinkResult:
    """Link mentions to canonical entities.

    ``doc_of`` maps chunk ids to document ids; ``stored_types`` maps a normalised name to the
    types the graph already has for it and ``stored_contexts`` entity ids to their context means.
    A name seen with two or more types is ambiguous: its mentions are embedded (``embed``) and a
    mention moves to another type when its context is clearly closer to that type's contexts.
    """
    stored_types = stored_types or {}
    stored_contexts = stored_contexts or {}
    keys = _resolve_surnames(
        [(entity_key(m.surface, m.type), m.type) for m in mentions],
        [doc_of[m.chunk_id] for m in mentions],
    )
    by_key: dict[str, list[int]] = defaultdict(list)
    for row, (key, _) in enumerate(keys):
        by_key[key].append(row)
    vectors: dict[int, np.ndarray] = {}
    reassigned = 0
    if embed is not None:
        ambiguous = {
            key: rows
            for key, rows in by_key.items()
            if len({keys[r][1] for r in rows} | stored_types.get(key, set())) > 1
        }
        flat = [r for rows in ambiguous.values() for r in rows]
        if flat:
            embedded = np.asarray(embed([mentions[r].context for r in flat]), dtype=np.float32)
            vectors = dict(zip(flat, embedded, strict=True))
        stored_by_key: dict[str, dict[str, StoredContext]] = defaultdict(dict)
        for eid, ctx in stored_contexts.items():
            kind, key = split_entity_id(eid)
            stored_by_key[key][kind] = ctx
        for key, rows in ambiguous.items():
            chosen = _disambiguate(
                keys, np.stack([vectors[r] for r in rows]), rows, stored_by_key.get(key, {})
            )
            for r, kind in zip(rows, chosen, strict=True):
                if kind != keys[r][1]:
                    reassigned += 1
                    keys[r] = (key, kind)
    entities: dict[str, EntityUpdate] = {}
    chunk_entities: dict[str, dict[str, int]] = defaultdict(dict)
    mention_entity: list[str] = []
    for row, (mention, (key, kind)) in enumerate(zip(mentions, keys, strict=True)):
        eid = entity_id(kind, key)
        mention_entity.append(eid)
        update = entities.get(eid)
        if update is None:
            update = entities[eid] = EntityUpdate(eid, kind, key)
        update.names[display_name(mention.surface, kind)] += 1
        update.mentions += 1
        if row in vectors:
            vector = vectors[row]
            update.context_sum = (
                vector.copy() if update.context_sum is None else update.context_sum + vector
            )
            update.context_count += 1
        counts = chunk_entities[mention.chunk_id]
        counts[eid] = counts.get(eid, 0) + 1
    return LinkResult(entities, dict(chunk_entities), mention_entity, vectors, reassigned)


def cooccurrence_pairs(
    chunk_entities: Mapping[str, Mapping[str, int]], max_entities: int = 40
) -> Counter[tuple[str, str]]:
    """Entity pairs (sorted ids) with the number of chunks both occur in; per chunk only its
    ``max_entities`` most-mentioned entities pair up (a roster of 200 names is not 20k facts)."""
    pairs: Counter[tuple[str, str]] = Counter()
    for counts in chunk_entities.values():
        top = sorted(counts, key=lambda eid: (-counts[eid], eid))[:max_entities]
        top.sort()
        for i, a in enumerate(top):
            for b in top[i + 1 :]:
                pairs[(a, b)] += 1
    return pairs
