"""Readers for document sources: a directory tree, JSON Lines, CSV and the BEIR layout.

Every reader yields :class:`RawDocument` or :class:`Skipped`; nothing disappears silently:
an unreadable file or row is reported by name with the reason, and reading goes on.

Access control (see :mod:`slipway.access`): a JSON line's ``acl`` field, a CSV's ``acl``
column, or in a directory a ``<file>.acl`` sidecar (for that file) or an ``.acl`` file (for
every file below its directory; the nearest one wins) list who may read a document: one
principal per line or comma-separated, ``#`` starts a comment. A row whose ACL cannot be read
is skipped, never indexed without one.
"""

from __future__ import annotations

import csv
import gzip
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TextIO

from slipway.access import Acl, AclError, parse_acl

SourceFormat = Literal["auto", "directory", "jsonl", "csv", "beir"]
TEXT_SUFFIXES = {
    ".txt": "text",
    ".md": "markdown",
    ".markdown": "markdown",
    ".html": "html",
    ".htm": "html",
    ".pdf": "pdf",
}


class SourceError(ValueError):
    """A source cannot be read at all; the message says what to change."""


@dataclass(frozen=True)
class RawDocument:
    """A document as read, before cleaning."""

    id: str
    text: str
    title: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    acl: Acl = None


@dataclass(frozen=True)
class Skipped:
    """A file or row that could not be used, and why."""

    name: str
    reason: str


@dataclass(frozen=True)
class CsvColumns:
    """Which CSV columns hold the id, text, title and metadata."""

    id: str = "id"
    text: str = "text"
    title: str | None = "title"
    metadata: tuple[str, ...] = ()
    acl: str | None = None  # the ACL column; None: the "acl" column when the file has one


Item = RawDocument | Skipped


def detect_format(path: Path) -> SourceFormat:
    """The format of ``path`` from its shape and suffix."""
    if path.is_dir():
        return "beir" if (path / "corpus.jsonl").is_file() else "directory"
    suffix = path.name.removesuffix(".gz").rsplit(".", 1)[-1]
    if suffix == "jsonl":
        return "jsonl"
    if suffix == "csv":
        return "csv"
    raise SourceError(
        f"Cannot tell the format of {path}: use a directory, a .jsonl, a .csv (optionally "
        ".gz) or a BEIR "
        "directory (with corpus.jsonl), or set the format explicitly."
    )


def open_text(path: Path) -> TextIO:
    """A text file, decompressed on the fly when its name ends in ``.gz``."""
    if path.name.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8", errors="replace", newline="")
    return path.open(encoding="utf-8", errors="replace", newline="")


def read_source(
    path: Path, fmt: SourceFormat = "auto", columns: CsvColumns | None = None
) -> Iterator[Item]:
    """Documents of a source, in a stable order."""
    path = Path(path)
    if not path.exists():
        raise SourceError(f"Document source {path} does not exist; set corpus= to a path.")
    fmt = detect_format(path) if fmt == "auto" else fmt
    if fmt == "directory":
        yield from read_directory(path)
    elif fmt == "beir":
        yield from read_jsonl(path / "corpus.jsonl")
    elif fmt == "jsonl":
        yield from read_jsonl(path)
    elif fmt == "csv":
        yield from read_csv(path, columns or CsvColumns())
    else:
        raise SourceError(f"Unknown source format {fmt!r}; use directory, jsonl, csv or beir.")


ACL_SIDECAR = ".acl"


def read_acl_file(path: Path) -> Acl:
    """The principals of a sidecar ACL file (one a line or comma-separated; ``#`` comments)."""
    lines = [line.split("#", 1)[0] for line in path.read_text(encoding="utf-8").splitlines()]
    return parse_acl(",".join(lines), path.name) or ()  # an empty sidecar: nobody but '*'


def directory_acl(root: Path, path: Path, found: dict[Path, Acl | None]) -> Acl:
    """The ACL of ``path`` under ``root``: its ``<file>.acl``, else the nearest ``.acl`` of
    its directory or one above it (up to ``root``); ``None`` without either. ``found``
    caches the directories' ACLs."""
    own = path.with_name(path.name + ACL_SIDECAR)
    if own.is_file():
        return read_acl_file(own)
    directory = path.parent
    chain: list[Path] = []
    while True:
        if directory in found:
            acl = found[directory]
            break
        chain.append(directory)
        sidecar = directory / ACL_SIDECAR
        if sidecar.is_file():
            acl = read_acl_file(sidecar)
            break
        if directory == root:
            acl = None
            break
        directory = directory.parent
    for seen in chain:
        found[seen] = acl
    return acl


def read_directory(root: Path) -> Iterator[Item]:
    """Every .txt, .md, .html and .pdf file under ``root``; ids are relative paths; ACLs from
    sidecar files (see the module's text)."""
    found: dict[Path, Acl | None] = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        name = path.relative_to(root).as_posix()
        kind = TEXT_SUFFIXES.get(path.suffix.lower())
        if kind is None:
            continue
        try:
            acl = directory_acl(root, path, found)
        except (AclError, OSError, UnicodeDecodeError) as exc:
            yield Skipped(name, f"unreadable ACL sidecar: {exc}")
            continue
        try:
            title, text = _read_file(path, kind)
        except Exception as exc:
            yield Skipped(name, f"unreadable {kind}: {type(exc).__name__}: {exc}")
            continue
        yield RawDocument(
            id=name, title=title, text=text, metadata={"source": name, "type": kind}, acl=acl
        )


def _read_file(path: Path, kind: str) -> tuple[str, str]:
    if kind == "pdf":
        return _read_pdf(path)
    raw = path.read_bytes().decode("utf-8", errors="strict")
    if kind == "html":
        return html_to_text(raw)
    if kind == "markdown":
        heading = next((ln[2:].strip() for ln in raw.splitlines() if ln.startswith("# ")), "")
        return heading or path.stem, raw
    return path.stem, raw


def html_to_text(html: str) -> tuple[str, str]:
    """Title and visible text of an HTML page (scripts, styles and templates dropped)."""
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(html, "html.parser")
    title = soup.title.get_text(" ", strip=True) if soup.title else ""
    for tag in soup(["script", "style", "noscript", "template", "head", "title"]):
        tag.decompose()
    return title, soup.get_text("\n")


def _read_pdf(path: Path) -> tuple[str, str]:
    from pypdf import PdfReader

    reader = PdfReader(str(path))
    if reader.is_encrypted:
        raise SourceError("the PDF is encrypted")
    text = "\n\n".join(page.extract_text() or "" for page in reader.pages)
    title = (reader.metadata.title if reader.metadata else None) or path.stem
    return str(title), text


def read_jsonl(path: Path) -> Iterator[Item]:
    """JSON Lines with ``_id``/``id``, ``text`` and optional ``title``, ``metadata`` and
    ``acl``."""
    with open_text(path) as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path.name}:{number}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                yield Skipped(where, f"invalid JSON: {exc.msg}")
                continue
            if not isinstance(row, dict):
                yield Skipped(where, "a line must be a JSON object")
                continue
            text = row.get("text")
            if not isinstance(text, str):
                yield Skipped(where, "no 'text' string")
                continue
            doc_id = str(row.get("_id") or row.get("id") or where)
            meta = row.get("metadata")
            meta = meta if isinstance(meta, dict) else {}
            try:
                acl = parse_acl(row.get("acl"), f"{where} acl")
            except AclError as exc:
                yield Skipped(where, str(exc))
                continue
            yield RawDocument(
                id=doc_id,
                title=str(row.get("title") or ""),
                text=text,
                metadata={k: str(v) for k, v in meta.items()},
                acl=acl,
            )


def read_csv(path: Path, columns: CsvColumns) -> Iterator[Item]:
    """CSV with configurable id, text, title and metadata columns."""
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    with open_text(path) as handle:
        reader = csv.DictReader(handle)
        header = reader.fieldnames or []
        acl_column = columns.acl or ("acl" if "acl" in header else None)
        wanted = (
            columns.id,
            columns.text,
            *columns.metadata,
            *([columns.acl] if columns.acl else []),
        )
        missing = [c for c in wanted if c not in header]
        if missing:
            raise SourceError(
                f"{path.name} has no column(s) {missing}; its columns are {header}. "
                "Set the CSV column names in the step parameters."
            )
        for number, row in enumerate(reader, start=2):
            text = row.get(columns.text)
            if text is None:
                yield Skipped(f"{path.name}:{number}", "row is shorter than the header")
                continue
            title = row.get(columns.title, "") if columns.title else ""
            try:
                acl = (
                    parse_acl(row.get(acl_column), f"{path.name}:{number} acl")
                    if acl_column
                    else None
                )
            except AclError as exc:
                yield Skipped(f"{path.name}:{number}", str(exc))
                continue
            yield RawDocument(
                id=str(row[columns.id] or f"{path.name}:{number}"),
                title=title or "",
                text=text,
                metadata={c: str(row.get(c) or "") for c in columns.metadata},
                acl=acl,
            )
