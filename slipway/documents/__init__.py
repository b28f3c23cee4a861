"""Documents: read a corpus from any supported source, clean it, drop exact duplicates."""

from __future__ import annotations

import hashlib
import logging
import re
import unicodedata
from pathlib import Path

from pydantic import BaseModel, Field

from slipway.documents.demo import DEMO_CORPUS
from slipway.documents.readers import CsvColumns, Skipped, SourceFormat, read_source

logger = logging.getLogger(__name__)

LOGGED_SKIPS = 20
_SPACES = re.compile(r"[ \t\r\f\v]+")
_BLANK_LINES = re.compile(r"\n{3,}")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


class Document(BaseModel):
    """One cleaned document."""

    id: str
    title: str = ""
    text: str
    content_hash: str
    metadata: dict[str, str] = Field(default_factory=dict)
    acl: tuple[str, ...] | None = None  # who may read it (see slipway.access); None: no ACL


class DocumentSet(BaseModel):
    """A cleaned corpus and what happened while reading it."""

    source: str
    documents: list[Document]
    skipped: dict[str, str] = Field(default_factory=dict)  # file, line or id -> reason
    duplicates: int = 0

    def summary(self) -> str:
        """One line: documents kept, skipped and dropped as duplicates."""
        return (
            f"{len(self.documents)} documents from {self.source}; "
            f"{len(self.skipped)} skipped, {self.duplicates} exact duplicates dropped"
        )


def clean_text(text: str) -> str:
    """Unicode NFKC, no control characters, unified whitespace, at most one blank line in a row."""
    text = unicodedata.normalize("NFKC", text)
    text = _CONTROL.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))
    lines = [_SPACES.sub(" ", line).strip() for line in text.split("\n")]
    return _BLANK_LINES.sub("\n\n", "\n".join(lines)).strip()


def content_hash(title: str, text: str) -> str:
    """SHA-256 of the cleaned title and text."""
    return hashlib.sha256(f"{title}\x00{text}".encode()).hexdigest()


def default_corpus() -> Path:
    """The packaged demo corpus: XQuAD's 240 English passages (a BEIR folder, see
    ``slipway/documents/data/xquad_en/README.md``)."""
    return DEMO_CORPUS


def source_fingerprint(path: Path) -> str:
    """A cheap fingerprint of a source (every file's path, size and modification time): a
    cache key that changes whenever a file is added, removed or edited."""
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    digest = hashlib.sha256()
    for file in files:
        if file.exists():
            stat = file.stat()
            digest.update(f"{file}\x00{stat.st_size}\x00{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def read_corpus(
    path: Path,
    fmt: SourceFormat = "auto",
    min_chars: int = 20,
    columns: CsvColumns | None = None,
) -> DocumentSet:
    """Read, clean and de-duplicate a corpus; skipped files and rows are reported by name."""
    docs: list[Document] = []
    skipped: dict[str, str] = {}
    seen_hashes: set[tuple[str, tuple[str, ...] | None]] = set()
    seen_ids: set[str] = set()
    duplicates = 0
    for item in read_source(path, fmt, columns):
        if isinstance(item, Skipped):
            skipped[item.name] = item.reason
            continue
        title, text = clean_text(item.title), clean_text(item.text)
        if len(text) < min_chars:
            skipped[item.id] = f"text shorter than {min_chars} characters"
            continue
        if item.id in seen_ids:
            skipped[item.id] = "duplicate id (the first one is kept)"
            continue
        digest = content_hash(title, text)
        seen = (digest, item.acl)  # a copy under another ACL is another readers' document
        if seen in seen_hashes:
            duplicates += 1
            continue
        seen_hashes.add(seen)
        seen_ids.add(item.id)
        docs.append(
            Document(
                id=item.id,
                title=title,
                text=text,
                content_hash=digest,
                metadata=item.metadata,
                acl=item.acl,
            )
        )
    for name, reason in list(skipped.items())[:LOGGED_SKIPS]:
        logger.warning("Skipped %s: %s", name, reason)
    if len(skipped) > LOGGED_SKIPS:
        logger.warning(
            "... and %d more skipped (all are listed in the DocumentSet's `skipped`)",
            len(skipped) - LOGGED_SKIPS,
        )
    return DocumentSet(source=str(path), documents=docs, skipped=skipped, duplicates=duplicates)
