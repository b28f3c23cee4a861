"""The sparse index: BM25 with bm25s, saved next to its chunk ids and their filter metadata."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import bm25s
import numpy as np

from slipway.retrieval.dense import Filters, Metadata, filter_values, values_of
from slipway.retrieval.fusion import Hit

IDS_FILE = "ids.json"


class SparseIndex:
    """BM25 over chunk texts (defaults: k1=0.9, b=0.4, English stop words, no stemming)."""

    def __init__(
        self,
        retriever: bm25s.BM25,
        ids: list[str],
        stopwords: str | None,
        metadata: Sequence[Metadata] | None = None,
    ) -> None:
        self.retriever = retriever
        self.ids = ids
        self.stopwords = stopwords
        self.metadata = list(metadata) if metadata is not None else [{} for _ in ids]
        self._postings: dict[tuple[str, str], list[int]] = {}
        for row, meta in enumerate(self.metadata):
            for key, value in meta.items():
                for item in values_of(value):
                    self._postings.setdefault((key, item), []).append(row)

    @classmethod
    def build(
        cls,
        ids: Sequence[str],
        texts: Sequence[str],
        k1: float = 0.9,
        b: float = 0.4,
        stopwords: str | None = "english",
        metadata: Sequence[Metadata] | None = None,
    ) -> SparseIndex:
        """Index ``texts`` under ``ids``; ``metadata`` (one dict per text) enables filters."""
        if len(ids) != len(texts) or (metadata is not None and len(metadata) != len(ids)):
            raise ValueError("ids, texts and metadata must have the same length.")
        retriever = bm25s.BM25(k1=k1, b=b)
        retriever.index(
            bm25s.tokenize(list(texts), stopwords=stopwords, show_progress=False),
            show_progress=False,
        )
        return cls(retriever, list(ids), stopwords, metadata)

    def save(self, directory: Path) -> None:
        """Write the index, its ids and their metadata into ``directory``."""
        directory.mkdir(parents=True, exist_ok=True)
        self.retriever.save(str(directory))
        (directory / IDS_FILE).write_text(
            json.dumps({"ids": self.ids, "stopwords": self.stopwords, "metadata": self.metadata})
        )

    @classmethod
    def load(cls, directory: Path) -> SparseIndex:
        """Open an index written by :meth:`save`."""
        meta = json.loads((directory / IDS_FILE).read_text())
        return cls(
            bm25s.BM25.load(str(directory)), meta["ids"], meta["stopwords"], meta.get("metadata")
        )

    def mask(self, filters: Filters | None) -> np.ndarray | None:
        """1.0 for the chunks that satisfy ``filters`` (``None`` when there are none)."""
        wanted = filter_values(filters)
        if not wanted:
            return None
        mask = np.ones(len(self.ids), dtype=np.float32)
        for key, values in wanted.items():
            allowed = np.zeros(len(self.ids), dtype=np.float32)
            for value in values:
                allowed[self._postings.get((key, value), [])] = 1.0
            mask *= allowed
        return mask

    def search(
        self, queries: Sequence[str], k: int = 10, filters: Filters | None = None
    ) -> list[list[Hit]]:
        """Top ``k`` (id, score) per query; a query with no known term gets no hits."""
        k = min(k, len(self.ids))
        if not queries or k == 0:
            return [[] for _ in queries]
        mask = self.mask(filters)
        if mask is not None and not mask.any():
            return [[] for _ in queries]
        tokens = bm25s.tokenize(list(queries), stopwords=self.stopwords, show_progress=False)
        docs, scores = self.retriever.retrieve(tokens, k=k, show_progress=False, weight_mask=mask)
        return [
            [(self.ids[int(d)], float(s)) for d, s in zip(row_d, row_s, strict=True) if s > 0]
            for row_d, row_s in zip(docs, scores, strict=True)
        ]
