"""The sparse index: BM25 with bm25s, saved next to its chunk ids."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import bm25s

from slipway.retrieval.fusion import Hit

IDS_FILE = "ids.json"


class SparseIndex:
    """BM25 over chunk texts (defaults: k1=0.9, b=0.4, English stop words, no stemming)."""

    def __init__(self, retriever: bm25s.BM25, ids: list[str], stopwords: str | None) -> None:
        self.retriever = retriever
        self.ids = ids
        self.stopwords = stopwords

    @classmethod
    def build(cls, ids: Sequence[str], texts: Sequence[str], k1: float = 0.9, b: float = 0.4,
              stopwords: str | None = "english") -> SparseIndex:
        """Index ``texts`` under ``ids``."""
        if len(ids) != len(texts):
            raise ValueError("ids and texts must have the same length.")
        retriever = bm25s.BM25(k1=k1, b=b)
        retriever.index(bm25s.tokenize(list(texts), stopwords=stopwords, show_progress=False),
                        show_progress=False)
        return cls(retriever, list(ids), stopwords)

    def save(self, directory: Path) -> None:
        """Write the index and its ids into ``directory``."""
        directory.mkdir(parents=True, exist_ok=True)
        self.retriever.save(str(directory))
        (directory / IDS_FILE).write_text(json.dumps({"ids": self.ids, "stopwords": self.stopwords}))

    @classmethod
    def load(cls, directory: Path) -> SparseIndex:
        """Open an index written by :meth:`save`."""
        meta = json.loads((directory / IDS_FILE).read_text())
        return cls(bm25s.BM25.load(str(directory)), meta["ids"], meta["stopwords"])

    def search(self, queries: Sequence[str], k: int = 10) -> list[list[Hit]]:
        """Top ``k`` (id, score) per query; a query with no known term gets no hits."""
        k = min(k, len(self.ids))
        tokens = bm25s.tokenize(list(queries), stopwords=self.stopwords, show_progress=False)
        docs, scores = self.retriever.retrieve(tokens, k=k, show_progress=False)
        return [[(self.ids[int(d)], float(s)) for d, s in zip(row_d, row_s, strict=True) if s > 0]
                for row_d, row_s in zip(docs, scores, strict=True)]
