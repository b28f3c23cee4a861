"""Chunking by the embedder's own tokenizer: sizes in tokens, cuts only at whitespace."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

from pydantic import BaseModel, Field
from tokenizers import Tokenizer

from slipway.documents import Document


class Chunk(BaseModel):
    """A piece of a document, sized for the embedder; ids are shared with the vector index."""

    id: str
    doc_id: str
    position: int
    text: str
    n_tokens: int
    title: str = ""
    content_hash: str
    metadata: dict[str, str] = Field(default_factory=dict)
    acl: tuple[str, ...] | None = None  # its document's (see slipway.access)


class ChunkSet(BaseModel):
    """The chunks of a document set and how they were cut."""

    chunk_tokens: int
    overlap_tokens: int
    tokenizer: str
    chunks: list[Chunk]


def load_tokenizer(model_dir: Path) -> Tokenizer:
    """The fast tokenizer of a model directory (``tokenizer.json``)."""
    path = Path(model_dir) / "tokenizer.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"{model_dir} has no tokenizer.json; chunk with the embedder's "
            "model directory (a fast tokenizer is required)."
        )
    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


def _boundaries(text: str, offsets: list[tuple[int, int]]) -> list[bool]:
    """``ok[i]``: a chunk may start at token ``i`` (whitespace separates it from token i-1)."""
    ok = [True]
    for i in range(1, len(offsets)):
        gap = text[offsets[i - 1][1] : offsets[i][0]]
        ok.append(offsets[i][0] > offsets[i - 1][1] and any(c.isspace() for c in gap))
    return ok


def split_text(
    text: str, tokenizer: Tokenizer, chunk_tokens: int, overlap_tokens: int
) -> list[tuple[str, int]]:
    """Pieces of ``text`` of at most ``chunk_tokens`` tokens, overlapping by about
    ``overlap_tokens``, each starting and ending at whitespace (a single word longer than a
    chunk is the only exception, and is cut at a token)."""
    if chunk_tokens < 8 or not 0 <= overlap_tokens < chunk_tokens // 2:
        raise ValueError("chunk_tokens must be >= 8 and overlap_tokens in [0, chunk_tokens / 2).")
    return split_encoded(
        text, tokenizer.encode(text, add_special_tokens=False).offsets, chunk_tokens, overlap_tokens
    )


def split_encoded(
    text: str, offsets: list[tuple[int, int]], chunk_tokens: int, overlap_tokens: int
) -> list[tuple[str, int]]:
    """:func:`split_text` on a text already tokenized (its token character offsets)."""
    if chunk_tokens < 8 or not 0 <= overlap_tokens < chunk_tokens // 2:
        raise ValueError("chunk_tokens must be >= 8 and overlap_tokens in [0, chunk_tokens / 2).")
    offsets = list(offsets)
    n = len(offsets)
    if n == 0:
        return []
    ok = _boundaries(text, offsets)
    pieces: list[tuple[str, int]] = []
    start = 0
    while start < n:
        end = min(start + chunk_tokens, n)
        if end < n:
            cut = next((i for i in range(end, start, -1) if ok[i]), end)  # back to a word start
            end = cut
        pieces.append((text[offsets[start][0] : offsets[end - 1][1]], end - start))
        if end >= n:
            break
        nxt = max(end - overlap_tokens, start + 1)
        while nxt < end and not ok[nxt]:
            nxt += 1  # overlap starts at a word start too
        start = nxt
    return pieces


def chunk_documents(
    documents: Iterable[Document],
    tokenizer: Tokenizer,
    chunk_tokens: int = 200,
    overlap_tokens: int = 32,
    tokenizer_name: str = "",
) -> ChunkSet:
    """Chunks of every document, with ids ``<doc id>#<position>``."""
    chunks: list[Chunk] = []
    docs = list(documents)
    for start in range(0, len(docs), 512):  # batched: the tokenizer runs on every core
        block = docs[start : start + 512]
        encodings = tokenizer.encode_batch([d.text for d in block], add_special_tokens=False)
        for doc, encoding in zip(block, encodings, strict=True):
            chunks.extend(
                _chunks_of(
                    doc, split_encoded(doc.text, encoding.offsets, chunk_tokens, overlap_tokens)
                )
            )
    return ChunkSet(
        chunk_tokens=chunk_tokens,
        overlap_tokens=overlap_tokens,
        tokenizer=tokenizer_name,
        chunks=chunks,
    )


def _chunks_of(doc: Document, pieces: list[tuple[str, int]]) -> list[Chunk]:
    chunks = []
    for position, (text, n_tokens) in enumerate(pieces):
        chunks.append(
            Chunk(
                id=f"{doc.id}#{position}",
                doc_id=doc.id,
                position=position,
                text=text,
                n_tokens=n_tokens,
                title=doc.title,
                metadata=doc.metadata,
                acl=doc.acl,
                content_hash=hashlib.sha256(text.encode()).hexdigest(),
            )
        )
    return chunks
