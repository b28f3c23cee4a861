"""Stores document and chunk sets as JSON Lines, with counts and a length histogram."""

from __future__ import annotations

import base64
import io
import json
import os
from typing import Any, ClassVar

from zenml.enums import ArtifactType, VisualizationType
from zenml.materializers.base_materializer import BaseMaterializer
from zenml.metadata.metadata_types import MetadataType

from slipway.documents import Document, DocumentSet
from slipway.documents.chunking import Chunk, ChunkSet

_HEADER = "header.json"
_ROWS = "rows.jsonl"


def _histogram_png(lengths: list[int], label: str) -> str:
    from matplotlib.figure import Figure  # no pyplot: the process's backend stays as it is

    fig = Figure(figsize=(6, 3))
    ax = fig.subplots()
    ax.hist(lengths or [0], bins=40)
    ax.set_xlabel(label)
    ax.set_ylabel("count")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    return base64.b64encode(buf.getvalue()).decode()


class TextSetMaterializer(BaseMaterializer):
    """``DocumentSet`` and ``ChunkSet``: a JSON header plus one JSON line per item."""

    ASSOCIATED_TYPES: ClassVar[tuple[type[Any], ...]] = (DocumentSet, ChunkSet)
    ASSOCIATED_ARTIFACT_TYPE: ClassVar[ArtifactType] = ArtifactType.DATA

    @staticmethod
    def _items(data: DocumentSet | ChunkSet) -> list[Document] | list[Chunk]:
        return data.documents if isinstance(data, DocumentSet) else data.chunks

    def save(self, data: DocumentSet | ChunkSet) -> None:
        """Header (everything but the items) and the items, streamed."""
        field = "documents" if isinstance(data, DocumentSet) else "chunks"
        header = {"type": type(data).__name__, **data.model_dump(exclude={field})}
        with self.artifact_store.open(os.path.join(self.uri, _HEADER), "w") as handle:
            json.dump(header, handle)
        with self.artifact_store.open(os.path.join(self.uri, _ROWS), "w") as handle:
            for item in self._items(data):
                handle.write(item.model_dump_json() + "\n")

    def load(self, data_type: type[Any]) -> DocumentSet | ChunkSet:
        """Read the header and the items back into the typed model."""
        with self.artifact_store.open(os.path.join(self.uri, _HEADER), "r") as handle:
            header = json.load(handle)
        kind = header.pop("type")
        item_type, field = (Document, "documents") if kind == "DocumentSet" else (Chunk, "chunks")
        with self.artifact_store.open(os.path.join(self.uri, _ROWS), "r") as handle:
            items = [item_type.model_validate_json(line) for line in handle if line.strip()]
        model = DocumentSet if kind == "DocumentSet" else ChunkSet
        return model.model_validate({**header, field: items})

    def extract_metadata(self, data: DocumentSet | ChunkSet) -> dict[str, MetadataType]:
        """Counts (and skipped/duplicates for documents)."""
        items = self._items(data)
        meta: dict[str, MetadataType] = {"count": len(items)}
        if isinstance(data, DocumentSet):
            meta.update(skipped=len(data.skipped), duplicates=data.duplicates)
        return meta

    def save_visualizations(self, data: DocumentSet | ChunkSet) -> dict[str, VisualizationType]:
        """Counts, a length histogram and the skip report, as one HTML page."""
        if isinstance(data, DocumentSet):
            lengths, unit = [len(d.text) for d in data.documents], "characters per document"
            extra = "".join(
                f"<li>{_esc(k)}: {_esc(v)}</li>" for k, v in list(data.skipped.items())[:50]
            )
            summary = (
                f"{len(data.documents)} documents, {len(data.skipped)} skipped, "
                f"{data.duplicates} duplicates" + (f"<ul>{extra}</ul>" if extra else "")
            )
        else:
            lengths, unit = [c.n_tokens for c in data.chunks], "tokens per chunk"
            summary = (
                f"{len(data.chunks)} chunks of up to {data.chunk_tokens} tokens "
                f"(overlap {data.overlap_tokens})"
            )
        png = _histogram_png(lengths, unit)
        page = f"<html><body><p>{summary}</p><img src='data:image/png;base64,{png}'/></body></html>"
        path = os.path.join(self.uri, "summary.html")
        with self.artifact_store.open(path, "w") as handle:
            handle.write(page)
        return {path: VisualizationType.HTML}


def _esc(value: str) -> str:
    import html

    return html.escape(str(value))
