"""The entity vector table: graph embeddings in LanceDB for nearest-entity search."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa

from slipway.graph.linking import split_entity_id
from slipway.retrieval.dense import sql_string

TABLE = "entities"


class NoEmbeddings(LookupError):
    """No entity embeddings have been written yet (the table does not exist)."""


class EntityVectors:
    """One LanceDB table of entity ids, names, types and graph embeddings (cosine search)."""

    def __init__(self, root: Path) -> None:
        import lancedb

        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.db = lancedb.connect(str(self.root))

    def replace(self, ids: Sequence[str], names: Sequence[str], vectors: np.ndarray) -> int:
        """Replace the table with these embeddings (one training run's output); rows written."""
        vectors = np.asarray(vectors, dtype=np.float32)
        table = pa.table(
            {
                "id": pa.array(list(ids), pa.string()),
                "name": pa.array(list(names), pa.string()),
                "type": pa.array([split_entity_id(i)[0] for i in ids], pa.string()),
                "vector": pa.FixedSizeListArray.from_arrays(
                    pa.array(vectors.reshape(-1)), vectors.shape[1]
                ),
            }
        )
        self.db.create_table(TABLE, table, mode="overwrite")
        return table.num_rows

    def _table(self):  # type: ignore[no-untyped-def]
        if TABLE not in self.db.table_names():
            raise NoEmbeddings(
                f"No entity embeddings under {self.root}: run the kg_update "
                "pipeline (its train_graph_embeddings step writes them)."
            )
        return self.db.open_table(TABLE)

    def vector_of(self, entity_id: str) -> np.ndarray | None:
        """The stored embedding of one entity."""
        rows = self._table().search().where(f"id = {sql_string(entity_id)}").limit(1).to_list()
        return np.asarray(rows[0]["vector"], np.float32) if rows else None

    def nearest(
        self, vector: np.ndarray, k: int = 10, exclude: str | None = None
    ) -> list[tuple[str, str, float]]:
        """The ``k`` entities closest to ``vector``: (id, name, cosine similarity)."""
        query = self._table().search(np.asarray(vector, np.float32)).metric("cosine")
        rows = query.limit(k + (1 if exclude else 0)).to_list()
        hits = [
            (r["id"], r["name"], 1.0 - float(r["_distance"])) for r in rows if r["id"] != exclude
        ]
        return hits[:k]

    def similar(self, entity_id: str, k: int = 10) -> list[tuple[str, str, float]]:
        """The entities whose graph embeddings are closest to ``entity_id``'s."""
        vector = self.vector_of(entity_id)
        if vector is None:
            raise LookupError(f"Entity {entity_id!r} has no graph embedding.")
        return self.nearest(vector, k, exclude=entity_id)
