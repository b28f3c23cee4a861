"""A refresh in its own process, for the kill test: ``python -m tests.index_worker ROOT MODEL
CORPUS FIRST LAST EDIT`` indexes documents FIRST..LAST of a BEIR corpus (the first EDIT of them
edited), publishes, and prints the stats as JSON. Progress goes to stderr, one line per batch."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from slipway.documents import Document, content_hash, read_corpus
from slipway.documents.chunking import Chunk, chunk_documents, load_tokenizer
from slipway.embedding import OnnxEmbedder, model_fingerprint
from slipway.embedding.cache import EmbeddingCache
from slipway.retrieval.dense import LanceDBStore
from slipway.retrieval.evaluation import publish_gated
from slipway.retrieval.index import IndexDir, document_hashes, refresh_index


def corpus_chunks(
    model: Path, corpus: Path, first: int, last: int, edit: int
) -> tuple[list[Document], list[Chunk]]:
    """Documents FIRST..LAST (the first EDIT of them edited) and their chunks."""
    docs = read_corpus(corpus, min_chars=1).documents[first:last]
    for i in range(edit):
        text = docs[i].text + " (revised)"
        docs[i] = docs[i].model_copy(
            update={"text": text, "content_hash": content_hash(docs[i].title, text)}
        )
    return docs, chunk_documents(docs, load_tokenizer(model), 128, 16).chunks


def main(root: Path, model: Path, corpus: Path, first: int, last: int, edit: int) -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    docs, chunks = corpus_chunks(model, corpus, first, last, edit)
    index = IndexDir(root, "killtest")
    store = LanceDBStore(index.lance_dir)
    version = refresh_index(
        index,
        store,
        chunks,
        document_hashes(docs),
        OnnxEmbedder(model),
        model_fingerprint(model),
        EmbeddingCache(root / "cache.sqlite"),
        write_batch=16,
    )
    publish_gated(index, store, version.version, margin=0.01, retain=3)
    print(version.model_dump_json())


if __name__ == "__main__":
    a = sys.argv[1:]
    main(Path(a[0]), Path(a[1]), Path(a[2]), int(a[3]), int(a[4]), int(a[5]))
