"""Documents: load a corpus, clean it, drop exact duplicates."""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from pathlib import Path

from pydantic import BaseModel, Field

PACKAGED_CORPUS = Path(__file__).parent / "data" / "corpus.jsonl"
_SPACES = re.compile(r"[ \t\r\f\v]+")
_BLANK_LINES = re.compile(r"\n{3,}")


class Document(BaseModel):
    """One cleaned document."""

    id: str
    title: str = ""
    text: str
    content_hash: str
    metadata: dict[str, str] = Field(default_factory=dict)


class DocumentSet(BaseModel):
    """A cleaned corpus and what happened while reading it."""

    source: str
    documents: list[Document]
    skipped: dict[str, str] = Field(default_factory=dict)  # id or line -> reason
    duplicates: int = 0


def clean_text(text: str) -> str:
    """Unicode NFKC, unified whitespace, at most one blank line in a row."""
    text = unicodedata.normalize("NFKC", text)
    lines = [_SPACES.sub(" ", line).strip() for line in text.split("\n")]
    return _BLANK_LINES.sub("\n\n", "\n".join(lines)).strip()


def content_hash(title: str, text: str) -> str:
    """SHA-256 of the cleaned title and text."""
    return hashlib.sha256(f"{title}\x00{text}".encode()).hexdigest()


def default_corpus(data_dir: Path | None) -> Path:
    """XQuAD passages from the shared data when present, else the packaged sample."""
    if data_dir is not None and (data_dir / "xquad_en" / "beir" / "corpus.jsonl").is_file():
        return data_dir / "xquad_en" / "beir" / "corpus.jsonl"
    return PACKAGED_CORPUS


def read_jsonl_corpus(path: Path, min_chars: int = 20) -> DocumentSet:
    """Read a BEIR-style ``corpus.jsonl`` (``_id``/``id``, ``title``, ``text``)."""
    if not path.is_file():
        raise FileNotFoundError(f"Corpus {path} does not exist; pass corpus=<path to a .jsonl>.")
    docs: list[Document] = []
    skipped: dict[str, str] = {}
    seen: set[str] = set()
    duplicates = 0
    with path.open(encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                skipped[f"line {number}"] = f"invalid JSON: {exc.msg}"
                continue
            doc_id = str(row.get("_id") or row.get("id") or f"line-{number}")
            title, text = clean_text(str(row.get("title") or "")), clean_text(str(row.get("text") or ""))
            if len(text) < min_chars:
                skipped[doc_id] = f"text shorter than {min_chars} characters"
                continue
            digest = content_hash(title, text)
            if digest in seen:
                duplicates += 1
                continue
            seen.add(digest)
            meta = {k: str(v) for k, v in (row.get("metadata") or {}).items()}
            docs.append(Document(id=doc_id, title=title, text=text, content_hash=digest, metadata=meta))
    return DocumentSet(source=str(path), documents=docs, skipped=skipped, duplicates=duplicates)
