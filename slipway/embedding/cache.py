"""A persistent embedding cache keyed by (embedding model version, text content hash).

A re-run, a rollback or a second index never embeds the same text with the same model twice.
SQLite (WAL) on disk: safe for several processes, and a crash loses at most the batch in flight.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from slipway.embedding import Embedder

_SCHEMA = """
CREATE TABLE IF NOT EXISTS embeddings (
    model_version TEXT NOT NULL,
    content_hash TEXT NOT NULL,
    vector BLOB NOT NULL,
    PRIMARY KEY (model_version, content_hash)
) WITHOUT ROWID
"""


def text_hash(text: str) -> str:
    """SHA-256 of a text, the cache key's second half."""
    return hashlib.sha256(text.encode()).hexdigest()


class EmbeddingCache:
    """Vectors by (model version, content hash), float32, in one SQLite file."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(str(path), timeout=30, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(_SCHEMA)
        self._db.commit()

    def get_many(self, model_version: str, hashes: Sequence[str]) -> dict[str, np.ndarray]:
        """The cached vectors among ``hashes``."""
        found: dict[str, np.ndarray] = {}
        for start in range(0, len(hashes), 500):
            part = list(hashes[start : start + 500])
            marks = ",".join("?" * len(part))
            rows = self._db.execute(
                f"SELECT content_hash, vector FROM embeddings WHERE model_version = ? "
                f"AND content_hash IN ({marks})",
                [model_version, *part],
            )
            found.update({h: np.frombuffer(v, dtype=np.float32) for h, v in rows})
        return found

    def put_many(self, model_version: str, hashes: Sequence[str], vectors: np.ndarray) -> None:
        """Store vectors (one transaction)."""
        with self._db:
            self._db.executemany(
                "INSERT OR REPLACE INTO embeddings VALUES (?, ?, ?)",
                [
                    (model_version, h, np.asarray(v, dtype=np.float32).tobytes())
                    for h, v in zip(hashes, vectors, strict=True)
                ],
            )

    def count(self, model_version: str | None = None) -> int:
        """Cached vectors, for one model version or all."""
        if model_version is None:
            return int(self._db.execute("SELECT COUNT(*) FROM embeddings").fetchone()[0])
        return int(
            self._db.execute(
                "SELECT COUNT(*) FROM embeddings WHERE model_version = ?", [model_version]
            ).fetchone()[0]
        )

    def close(self) -> None:
        """Close the database."""
        self._db.close()


def embed_cached(
    embedder: Embedder, model_version: str, texts: Sequence[str], cache: EmbeddingCache
) -> tuple[np.ndarray, int]:
    """Vectors of ``texts`` in order, embedding only what the cache lacks; returns (vectors,
    hits)."""
    hashes = [text_hash(t) for t in texts]
    cached = cache.get_many(model_version, sorted(set(hashes)))
    missing = sorted({h: t for h, t in zip(hashes, texts, strict=True) if h not in cached}.items())
    if missing:
        fresh = embedder.embed([t for _, t in missing])
        cache.put_many(model_version, [h for h, _ in missing], fresh)
        cached.update({h: v for (h, _), v in zip(missing, fresh, strict=True)})
    vectors = (
        np.stack([cached[h] for h in hashes])
        if texts
        else np.zeros((0, embedder.dimension), dtype=np.float32)
    )
    fresh_hashes = {h for h, _ in missing}
    hits = sum(1 for h in hashes if h not in fresh_hashes)
    return vectors.astype(np.float32, copy=False), hits
