"""Dense vector stores behind one protocol; LanceDB on disk is the embedded default."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from slipway.retrieval.fusion import Hit


class VectorStore(Protocol):
    """What the index refresh and the search need from a vector database."""

    def upsert(self, ids: Sequence[str], vectors: np.ndarray,
               metadata: Sequence[dict[str, str]] | None = None) -> None: ...

    def delete(self, ids: Sequence[str]) -> None: ...

    def search(self, vectors: np.ndarray, k: int = 10, where: str | None = None) -> list[list[Hit]]: ...

    def count(self) -> int: ...


class LanceDBStore:
    """A LanceDB table of (id, vector, doc_id, metadata JSON), cosine distance."""

    def __init__(self, path: Path, table: str = "chunks") -> None:
        import lancedb

        self.db = lancedb.connect(str(path))
        self.table_name = table
        self._table = self.db.open_table(table) if table in self.db.table_names() else None

    def upsert(self, ids: Sequence[str], vectors: np.ndarray,
               metadata: Sequence[dict[str, str]] | None = None) -> None:
        """Insert or replace rows by id."""
        if len(ids) == 0:
            return
        metadata = metadata or [{} for _ in ids]
        rows = [{"id": i, "vector": v.astype(np.float32).tolist(),
                 "doc_id": m.get("doc_id", i.split("#")[0])}
                for i, v, m in zip(ids, vectors, metadata, strict=True)]
        if self._table is None:
            self._table = self.db.create_table(self.table_name, data=rows)
            return
        (self._table.merge_insert("id").when_matched_update_all()
         .when_not_matched_insert_all().execute(rows))

    def delete(self, ids: Sequence[str]) -> None:
        """Remove rows by id."""
        if self._table is None or not ids:
            return
        quoted = ", ".join("'" + i.replace("'", "''") + "'" for i in ids)
        self._table.delete(f"id IN ({quoted})")

    def search(self, vectors: np.ndarray, k: int = 10, where: str | None = None) -> list[list[Hit]]:
        """Top ``k`` (id, cosine similarity) per query vector."""
        from lancedb.query import LanceVectorQueryBuilder

        if self._table is None:
            return [[] for _ in vectors]
        out = []
        for vector in vectors:
            query = self._table.search(vector.astype(np.float32).tolist(), query_type="vector")
            assert isinstance(query, LanceVectorQueryBuilder)
            query = query.distance_type("cosine").limit(k)
            if where:
                query = query.where(where, prefilter=True)
            out.append([(r["id"], 1.0 - float(r["_distance"])) for r in query.to_list()])
        return out

    def count(self) -> int:
        """Rows in the table."""
        return 0 if self._table is None else int(self._table.count_rows())
