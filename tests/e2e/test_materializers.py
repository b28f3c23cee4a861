"""Materializers of the text artifacts, round-tripped through a real artifact store."""

from __future__ import annotations

import os
from pathlib import Path

from slipway.documents import read_corpus
from slipway.documents.chunking import chunk_documents, load_tokenizer
from slipway.models import embedder_source


def _store_uri(name: str) -> str:
    """A fresh artifact directory inside the active store (ZenML creates it before a save)."""
    from zenml.client import Client
    from zenml.io import fileio

    uri = os.path.join(Client().active_stack.artifact_store.path, "tests", name)
    fileio.makedirs(uri)
    return uri


def test_document_and_chunk_sets_round_trip(zenml_stack: str, tmp_path: Path) -> None:
    from materializers.documents import TextSetMaterializer

    (tmp_path / "a.txt").write_text("First document, long enough to keep.")
    (tmp_path / "bad.pdf").write_bytes(b"not a pdf")
    docs = read_corpus(tmp_path, min_chars=5)
    chunks = chunk_documents(docs.documents, load_tokenizer(embedder_source().path), 16, 2)
    for name, data in (("docs", docs), ("chunks", chunks)):
        materializer = TextSetMaterializer(_store_uri(f"{name}-{os.getpid()}"))
        materializer.save(data)
        assert materializer.load(type(data)) == data
        visuals = materializer.save_visualizations(data)
        page = Path(next(iter(visuals))).read_text()
        assert "data:image/png;base64," in page
    assert TextSetMaterializer(_store_uri("m")).extract_metadata(docs) == {
        "count": 1,
        "skipped": 1,
        "duplicates": 0,
    }
