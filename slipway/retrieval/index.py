"""Versioned hybrid indexes: incremental refresh, a published pointer, garbage collection.

On disk, under ``<index root>/<name>/``::

    PUBLISHED.json          the pointer readers follow (replaced atomically), with history
    versions/v000007/       one directory per version: manifest.json, chunks.parquet, sparse/
    lance/                  the LanceDB table (when the dense store is LanceDB)

A version directory counts only once its ``manifest.json`` exists (written last, atomically);
the pointer moves only to such a version. A refresh killed at any point leaves the published
version serving and intact, and the next refresh starts its version again from that base.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, Field
from tokenizers import Tokenizer
from tqdm.auto import tqdm

from slipway.access import ACL_KEY, Acl, Reader, acl_tags, open_to_all
from slipway.documents import Document
from slipway.documents.chunking import Chunk
from slipway.embedding import Embedder
from slipway.embedding.cache import EmbeddingCache, embed_cached
from slipway.retrieval.dense import DenseReader, Metadata, VectorStore
from slipway.retrieval.fusion import Hit
from slipway.retrieval.sparse import SparseIndex

logger = logging.getLogger(__name__)

POINTER = "PUBLISHED.json"
MANIFEST = "manifest.json"
CHUNKS = "chunks.parquet"


class DocEntry(BaseModel):
    """A document as indexed: its content hash, the version it entered, its chunks."""

    hash: str
    signature: str  # content, metadata and chunking together: what decides "changed"
    version: str
    chunks: list[str]
    acl: tuple[str, ...] | None = None  # who may read it (slipway.access); None: no ACL


class RefreshStats(BaseModel):
    """What a refresh did, with the counts that prove it."""

    documents: int = 0
    chunks: int = 0
    new_docs: int = 0
    changed_docs: int = 0
    removed_docs: int = 0
    unchanged_docs: int = 0
    written_chunks: int = 0
    deleted_chunks: int = 0
    embedded: int = 0
    cache_hits: int = 0
    full_rebuild: bool = False
    reason: str = ""
    seconds: float = 0.0


class GraphGate(BaseModel):
    """The index gate's decision on graph retrieval for one version."""

    enabled: bool
    weight: float  # the graph ranking's fusion weight that scored best
    rrf_k: int = 60  # and the RRF constant it was fused with
    hybrid: float | None = None  # nDCG@10 on the evaluation set without the graph
    hybrid_graph: float | None = None  # and with it, at ``weight``
    reason: str


class Manifest(BaseModel):
    """One complete index version."""

    name: str
    version: str
    base: str | None
    created: str
    embedder: str  # fingerprint of the embedding model: the cache key's first half
    embedder_label: str = ""
    embedder_dir: str = ""  # where that embedder was on the machine that wrote the version
    model_name: str = ""  # the registered model whose embedder built it, when it was one
    model_version: str = ""
    dimension: int
    store: str
    handle: str
    documents: dict[str, DocEntry]
    stats: RefreshStats
    metrics: dict[str, dict[str, float]] = Field(default_factory=dict)
    acl_tagged: bool = False  # its chunks carry ACL tags (versions before access control: no)
    graph: GraphGate | None = None  # the gate's graph retrieval decision (None: not evaluated)


class Pointer(BaseModel):
    """The published version and the ones published before it, newest first."""

    version: str
    history: list[str]
    updated: str


class IndexVersion(BaseModel):
    """A refresh's result, passed between steps: where the version is and what it holds."""

    root: str
    name: str
    version: str
    handle: str
    base: str | None
    stats: RefreshStats
    changed: bool  # False: nothing changed, ``version`` is the published one
    embedder_dir: str = ""  # the ONNX embedder that wrote it (queries must use the same)


def indexed_text(title: str, text: str) -> str:
    """What is embedded and indexed for a chunk: its document title, then its text."""
    return f"{title}\n{text}" if title else text


def chunk_text(chunk: Chunk) -> str:
    """:func:`indexed_text` of a chunk."""
    return indexed_text(chunk.title, chunk.text)


def chunk_metadata(chunk: Chunk) -> Metadata:
    """A chunk's filterable metadata: the document's, ``doc_id``, and its ACL tags."""
    return {**chunk.metadata, "doc_id": chunk.doc_id, ACL_KEY: acl_tags(chunk.acl)}


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


class IndexDir:
    """The files of one named index."""

    def __init__(self, root: Path, name: str) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", name):
            raise ValueError(f"Invalid index name {name!r}: use 1-64 letters, digits, '-' or '_'.")
        self.root = Path(root)
        self.name = name
        self.path = self.root / name
        self.versions = self.path / "versions"

    @property
    def lance_dir(self) -> Path:
        """Where the LanceDB table of this index lives."""
        return self.path / "lance"

    def version_dir(self, version: str) -> Path:
        """Directory of one version."""
        return self.versions / version

    def complete(self, version: str) -> bool:
        """Whether ``version`` was written in full (its manifest exists)."""
        return (self.version_dir(version) / MANIFEST).is_file()

    def all_versions(self) -> list[str]:
        """Version directories, oldest first (complete or not)."""
        if not self.versions.is_dir():
            return []
        return sorted(
            p.name for p in self.versions.iterdir() if p.is_dir() and p.name[1:].isdigit()
        )

    def pointer(self) -> Pointer | None:
        """The published pointer, if anything was published."""
        path = self.path / POINTER
        return Pointer.model_validate_json(path.read_text()) if path.is_file() else None

    def published(self) -> str | None:
        """The published version's name."""
        pointer = self.pointer()
        return pointer.version if pointer else None

    def manifest(self, version: str) -> Manifest:
        """The manifest of a complete version."""
        if not self.complete(version):
            raise LookupError(f"Index {self.name!r} has no complete version {version!r}.")
        return Manifest.model_validate_json((self.version_dir(version) / MANIFEST).read_text())

    def next_version(self) -> str:
        """A new version's name; an unfinished attempt's name is reused."""
        versions = self.all_versions()
        if versions and not self.complete(versions[-1]):
            return versions[-1]
        number = int(versions[-1][1:]) + 1 if versions else 1
        return f"v{number:06d}"

    def publish(self, version: str) -> Pointer:
        """Move the pointer to a complete ``version`` (one atomic rename)."""
        if not self.complete(version):
            raise LookupError(f"Cannot publish {version!r}: it is not a complete version.")
        old = self.pointer()
        history = [version] + [v for v in (old.history if old else []) if v != version]
        pointer = Pointer(version=version, history=history, updated=_now())
        _write_atomic(self.path / POINTER, pointer.model_dump_json(indent=1))
        return pointer


def write_manifest(index: IndexDir, manifest: Manifest) -> None:
    """Write (or rewrite) a version's manifest atomically; its presence marks the version
    complete."""
    _write_atomic(index.version_dir(manifest.version) / MANIFEST, manifest.model_dump_json())


def _signature(chunks: Sequence[Chunk]) -> str:
    digest = hashlib.sha256()
    for chunk in chunks:
        digest.update(f"{chunk.id}\x00{chunk.content_hash}\x00{chunk.title}\x00".encode())
        digest.update(json.dumps(chunk.metadata, sort_keys=True).encode())
        if chunk.acl is not None:  # (absent: the signatures of versions before ACLs hold)
            digest.update(json.dumps(["acl", *chunk.acl]).encode())
    return digest.hexdigest()


class RefreshPlan(BaseModel):
    """What a refresh must write and delete to turn its base into the new version."""

    write: list[Chunk]
    delete: list[str]
    documents: dict[str, DocEntry]
    stats: RefreshStats


def plan_refresh(
    chunks: Sequence[Chunk],
    doc_hashes: Mapping[str, str],
    base: Manifest | None,
    embedder: str,
    version: str,
    carries_over: bool,
) -> RefreshPlan:
    """Compare the new chunks with the base version, document by document."""
    by_doc: dict[str, list[Chunk]] = {}
    for chunk in chunks:
        by_doc.setdefault(chunk.doc_id, []).append(chunk)
    stats = RefreshStats(documents=len(by_doc), chunks=len(chunks))
    if base is None:
        stats.full_rebuild, stats.reason = True, "first version of this index"
    elif not base.acl_tagged:
        stats.full_rebuild = True
        stats.reason = (
            f"{base.version} predates access-control tags: every chunk is written again "
            "(embeddings come from the cache)"
        )
    elif base.embedder != embedder:
        stats.full_rebuild = True
        stats.reason = (
            f"the embedder changed ({base.embedder[:12]} -> {embedder[:12]}): "
            "every chunk is re-embedded"
        )
    old = {} if base is None or stats.full_rebuild else base.documents
    documents: dict[str, DocEntry] = {}
    write: list[Chunk] = []
    delete: list[str] = []
    for doc_id, doc_chunks in by_doc.items():
        signature = _signature(doc_chunks)
        previous = old.get(doc_id)
        if previous is not None and previous.signature == signature:
            stats.unchanged_docs += 1
            documents[doc_id] = previous
            if not carries_over:
                write.extend(doc_chunks)
            continue
        if previous is None:
            stats.new_docs += 1
        else:
            stats.changed_docs += 1
            delete.extend(previous.chunks)
        write.extend(doc_chunks)
        documents[doc_id] = DocEntry(
            hash=doc_hashes.get(doc_id, signature),
            signature=signature,
            version=version,
            chunks=[c.id for c in doc_chunks],
            acl=doc_chunks[0].acl,
        )
    for doc_id, previous in old.items():
        if doc_id not in by_doc:
            stats.removed_docs += 1
            delete.extend(previous.chunks)
    if not carries_over or stats.full_rebuild:
        delete = []  # the staged version starts empty
    stats.written_chunks, stats.deleted_chunks = len(write), len(delete)
    return RefreshPlan(write=write, delete=delete, documents=documents, stats=stats)


def check_chunk_tokenizer(
    chunks: Sequence[Chunk], tokenizer: Tokenizer, max_tokens: int, sample: int = 50
) -> None:
    """Chunks must fit the embedder's window and be cut with its own tokenizer (else their
    sizes are wrong and long ones are truncated): fail clearly otherwise."""
    longest = max((c.n_tokens for c in chunks), default=0)
    if longest > max_tokens:
        raise ValueError(
            f"Chunks have up to {longest} tokens but the embedder reads at most {max_tokens}: "
            f"set chunk_tokens to {max_tokens} or less."
        )
    picked = list(chunks[:: max(1, len(chunks) // sample)])[:sample]
    if not picked:
        return
    counter = Tokenizer.from_str(tokenizer.to_str())
    counter.no_truncation()
    counts = [
        len(e.ids) for e in counter.encode_batch([c.text for c in picked], add_special_tokens=False)
    ]
    differ = sum(1 for c, n in zip(picked, counts, strict=True) if n != c.n_tokens)
    if differ > len(picked) // 2:
        raise ValueError(
            f"{differ} of {len(picked)} sampled chunks have another token count under the "
            "embedder's tokenizer: they were cut with a different tokenizer. Chunk with the "
            "embedder's own model directory (chunk_corpus's embedder_path) or embed with the "
            "model they were cut for."
        )


def _batches(chunks: Sequence[Chunk], size: int) -> Iterator[list[Chunk]]:
    ordered = sorted(chunks, key=lambda c: -c.n_tokens)  # similar lengths batch with little padding
    for start in range(0, len(ordered), size):
        yield ordered[start : start + size]


def _write_chunks(path: Path, chunks: Sequence[Chunk]) -> None:
    table = pa.table(
        {
            "id": [c.id for c in chunks],
            "doc_id": [c.doc_id for c in chunks],
            "position": pa.array([c.position for c in chunks], pa.int32()),
            "title": [c.title for c in chunks],
            "text": [c.text for c in chunks],
            "n_tokens": pa.array([c.n_tokens for c in chunks], pa.int32()),
            "metadata": [json.dumps(c.metadata, sort_keys=True) for c in chunks],
        }
    )
    pq.write_table(table, path)


def refresh_index(
    index: IndexDir,
    store: VectorStore,
    chunks: Sequence[Chunk],
    doc_hashes: Mapping[str, str],
    embedder: Embedder,
    embedder_fingerprint: str,
    cache: EmbeddingCache,
    embedder_label: str = "",
    embedder_dir: str = "",
    write_batch: int = 512,
    store_name: str = "lancedb",
    model: tuple[str, str] = ("", ""),
    progress: bool = True,
) -> IndexVersion:
    """Write a new, complete (not yet published) version: only new and changed chunks are
    embedded and written, chunks of changed and removed documents are deleted. ``model``: the
    registered model name and version whose embedder this is (recorded for rollbacks);
    ``progress``: a progress bar over the chunks to write (in a terminal; elsewhere a log
    line per written batch)."""
    started = time.perf_counter()
    if len({c.id for c in chunks}) != len(chunks):
        raise ValueError("Chunk ids are not unique; check the document ids of the corpus.")
    base_name = index.published()
    base = index.manifest(base_name) if base_name else None
    version = index.next_version()
    plan = plan_refresh(chunks, doc_hashes, base, embedder_fingerprint, version, store.carries_over)
    stats = plan.stats
    if base is not None and not (
        stats.full_rebuild or stats.new_docs or stats.changed_docs or stats.removed_docs
    ):
        logger.info("Index %s: nothing changed since %s; no new version.", index.name, base_name)
        stats.seconds = round(time.perf_counter() - started, 3)
        return IndexVersion(
            root=str(index.root),
            name=index.name,
            version=base.version,
            handle=base.handle,
            base=base_name,
            stats=stats,
            changed=False,
            embedder_dir=embedder_dir,
        )
    if stats.full_rebuild:
        logger.warning("Index %s %s: full rebuild, %s.", index.name, version, stats.reason)
    logger.info(
        "Index %s %s from %s: %d new, %d changed, %d removed, %d unchanged documents; "
        "%d chunks to write, %d to delete",
        index.name,
        version,
        base_name or "nothing",
        stats.new_docs,
        stats.changed_docs,
        stats.removed_docs,
        stats.unchanged_docs,
        len(plan.write),
        len(plan.delete),
    )
    workdir = index.version_dir(version)
    shutil.rmtree(workdir, ignore_errors=True)  # an unfinished attempt's files
    workdir.mkdir(parents=True)
    store.stage(version, None if stats.full_rebuild else base_name, embedder.dimension)
    if plan.delete:
        store.delete(version, plan.delete)
    done = 0
    with tqdm(
        total=len(plan.write),
        desc=f"Index {index.name} {version}: embedding",
        unit="chunk",
        disable=True if not progress or not plan.write else None,  # None: off without a TTY
        mininterval=2.0,
    ) as bar:
        for batch in _batches(plan.write, write_batch):
            vectors, hits = embed_cached(
                embedder, embedder_fingerprint, [chunk_text(c) for c in batch], cache
            )
            store.add(version, [c.id for c in batch], vectors, [chunk_metadata(c) for c in batch])
            stats.cache_hits += hits
            stats.embedded += len(batch) - hits
            done += len(batch)
            bar.update(len(batch))
            bar.set_postfix(embedded=stats.embedded, cached=stats.cache_hits, refresh=False)
            if bar.disable and progress:  # no terminal (a pod's log, a pipe): a line a batch
                logger.info(
                    "Index %s %s: wrote %d/%d chunks (%d embedded, %d from the cache)",
                    index.name,
                    version,
                    done,
                    len(plan.write),
                    stats.embedded,
                    stats.cache_hits,
                )
    logger.info(
        "Index %s %s: wrote %d chunks (%d embedded, %d from the cache)",
        index.name,
        version,
        done,
        stats.embedded,
        stats.cache_hits,
    )
    SparseIndex.build(
        [c.id for c in chunks],
        [chunk_text(c) for c in chunks],
        metadata=[chunk_metadata(c) for c in chunks],
    ).save(workdir / "sparse")
    _write_chunks(workdir / CHUNKS, chunks)
    handle = store.commit(version)
    reader = store.reader(handle)
    verify_version(reader, [c.id for c in chunks])
    stats.seconds = round(time.perf_counter() - started, 3)
    manifest = Manifest(
        name=index.name,
        version=version,
        base=base_name,
        created=_now(),
        embedder=embedder_fingerprint,
        embedder_label=embedder_label,
        embedder_dir=embedder_dir,
        model_name=model[0],
        model_version=model[1],
        dimension=embedder.dimension,
        store=store_name,
        handle=handle,
        documents=plan.documents,
        stats=stats,
        acl_tagged=True,
    )
    write_manifest(index, manifest)
    logger.info(
        "Index %s %s complete: %d documents, %d chunks, %d embedded, %d cache hits, %.1fs",
        index.name,
        version,
        stats.documents,
        stats.chunks,
        stats.embedded,
        stats.cache_hits,
        stats.seconds,
    )
    return IndexVersion(
        root=str(index.root),
        name=index.name,
        version=version,
        handle=handle,
        base=base_name,
        stats=stats,
        changed=True,
        embedder_dir=embedder_dir,
    )


class IndexCheckError(RuntimeError):
    """A written version does not hold exactly the chunks it should."""


def verify_version(reader: DenseReader, expected_ids: Sequence[str]) -> None:
    """The dense version holds each expected chunk id exactly once, and nothing else."""
    count, ids, expected = reader.count(), reader.ids(), set(expected_ids)
    if count != len(expected) or ids != expected:
        missing, extra = len(expected - ids), len(ids - expected)
        raise IndexCheckError(
            f"Index check failed: {count} rows for {len(expected)} chunks ({missing} missing, "
            f"{extra} unexpected, {count - len(ids)} duplicated); the version is not published."
        )


class OtherChunk(BaseModel):
    """Another matching chunk of a result's document (results grouped by document)."""

    id: str
    score: float
    position: int


class ChunkHit(BaseModel):
    """One search result: a chunk with its score and provenance."""

    id: str
    doc_id: str
    score: float
    title: str
    text: str
    position: int
    metadata: dict[str, str]
    other_chunks: list[OtherChunk] | None = Field(
        default=None,
        description='With group_by "document": the document\'s other matching chunks, best '
        "first (this hit is its best one).",
    )


def group_by_document(hits: Sequence[ChunkHit], k: int) -> list[ChunkHit]:
    """One hit per document, in the order of each document's best chunk, with its other
    matching chunks listed; the first ``k`` documents."""
    groups: dict[str, list[ChunkHit]] = {}
    for hit in hits:
        groups.setdefault(hit.doc_id, []).append(hit)
    return [
        best.model_copy(
            update={
                "other_chunks": [
                    OtherChunk(id=h.id, score=h.score, position=h.position) for h in rest
                ]
            }
        )
        for best, *rest in list(groups.values())[:k]
    ]


class OpenIndex:
    """One complete version opened for reading: dense reader, sparse index and chunk texts."""

    def __init__(self, index: IndexDir, version: str, store: VectorStore) -> None:
        self.index = index
        self.manifest = index.manifest(version)
        self.version = version
        self.dense = store.reader(self.manifest.handle)
        directory = index.version_dir(version)
        self.sparse = SparseIndex.load(directory / "sparse")
        table = pq.read_table(directory / CHUNKS)
        self._rows = {row["id"]: row for row in table.to_pylist()}
        self._acls: dict[str, Acl] = {d: e.acl for d, e in self.manifest.documents.items()}
        self._open = {
            default: open_to_all(self._acls.values(), default) for default in ("public", "deny")
        }

    @property
    def chunk_count(self) -> int:
        """Chunks in this version."""
        return len(self._rows)

    def open_to_all(self, reader: Reader) -> bool:
        """Whether ``reader`` (under its default) needs no ACL filter on this version: it
        reads every document, or every document is open to anyone."""
        return reader.sees_all or self._open[reader.default]

    def readable(self, doc_id: str, reader: Reader) -> bool:
        """Whether ``reader`` may read a document of this version (an unknown one: no)."""
        if doc_id not in self._acls:
            return False
        return reader.sees_all or reader.may_read(self._acls[doc_id])

    def chunk_readable(self, chunk_id: str, reader: Reader) -> bool:
        """Whether ``reader`` may read a chunk of this version (an unknown one: no)."""
        row = self._rows.get(chunk_id)
        return row is not None and self.readable(str(row["doc_id"]), reader)

    def chunks_of(self, doc_id: str) -> list[str]:
        """A document's chunk texts in order (empty when it is not indexed)."""
        rows = sorted(
            (r for r in self._rows.values() if r["doc_id"] == doc_id), key=lambda r: r["position"]
        )
        return [r["text"] for r in rows]

    def doc_of(self, chunk_id: str) -> str:
        """The document a chunk belongs to."""
        return str(self._rows[chunk_id]["doc_id"])

    def text_of(self, chunk_id: str) -> str:
        """The indexed text of a chunk (title and text)."""
        row = self._rows[chunk_id]
        return indexed_text(row["title"], row["text"])

    def hydrate(self, hits: Sequence[Hit]) -> list[ChunkHit]:
        """Search hits with their chunk text and metadata."""
        out = []
        for chunk_id, score in hits:
            row = self._rows[chunk_id]
            out.append(
                ChunkHit(
                    id=chunk_id,
                    doc_id=row["doc_id"],
                    score=score,
                    title=row["title"],
                    text=row["text"],
                    position=row["position"],
                    metadata=json.loads(row["metadata"]),
                )
            )
        return out


def open_published(index: IndexDir, store: VectorStore, version: str | None = None) -> OpenIndex:
    """The published version (or ``version``), with a clear error when there is none."""
    version = version or index.published()
    if version is None:
        raise LookupError(
            f"Index {index.name!r} at {index.root} has no published version; run "
            "the index_refresh pipeline first."
        )
    return OpenIndex(index, version, store)


class EmbedderMismatch(LookupError):
    """No retained version of an index was built by the embedder a reader has."""


def paired_version(index: IndexDir, fingerprint: str) -> str:
    """The version a reader whose embedder has ``fingerprint`` may search: the published one
    when that embedder built it, else the newest retained one it built (blue/green: a service
    keeps its pair while a new embedder's version is published, and one started with the new
    embedder takes the new version). Query vectors of one model never search another's index."""
    pointer = index.pointer()
    if pointer is None:
        raise LookupError(
            f"Index {index.name!r} at {index.root} has no published version; run "
            "the index_refresh pipeline first."
        )
    for version in dict.fromkeys([pointer.version, *pointer.history]):
        if index.complete(version) and index.manifest(version).embedder == fingerprint:
            return version
    published = index.manifest(pointer.version)
    raise EmbedderMismatch(
        f"Index {index.name!r}: no published or retained version was built by this embedder "
        f"({fingerprint[:12]}); {pointer.version} was built by {published.embedder[:12]} "
        f"({published.embedder_label or 'unlabelled'}). Serve the model version that built "
        "it, or run the index_refresh pipeline with this model."
    )


def collect_garbage(index: IndexDir, store: VectorStore, retain: int) -> list[str]:
    """Keep the last ``retain`` published versions (the pointer's history); delete the rest."""
    pointer = index.pointer()
    if pointer is None:
        return []
    keep = pointer.history[:retain]
    if pointer.history[retain:]:
        _write_atomic(
            index.path / POINTER,
            pointer.model_copy(update={"history": keep}).model_dump_json(indent=1),
        )
    versions = index.all_versions()
    newest = versions[-1] if versions else None  # may be a refused candidate, kept to inspect
    live = [v for v in [*keep, newest] if v is not None and index.complete(v)]
    store.gc([index.manifest(v).handle for v in live])
    dropped = [v for v in versions if v not in keep and v != newest]
    for version in dropped:
        shutil.rmtree(index.version_dir(version), ignore_errors=True)
    if dropped:
        logger.info("Index %s: removed versions %s (retaining %s)", index.name, dropped, keep)
    return dropped


def document_hashes(documents: Sequence[Document]) -> dict[str, str]:
    """``{document id: content hash}`` of a document set's documents."""
    return {d.id: d.content_hash for d in documents}
