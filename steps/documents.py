"""Steps: read and clean the document corpus; cut it into chunks for the embedder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from zenml import step

from materializers.documents import TextSetMaterializer
from slipway.config import ModelSettings, get_settings
from slipway.documents import DocumentSet, default_corpus, read_corpus, source_fingerprint
from slipway.documents.chunking import ChunkSet, chunk_documents, load_tokenizer
from slipway.documents.readers import CsvColumns, SourceFormat
from slipway.models import embedder_source
from steps.common import SLIPWAY_CACHE


@step(cache_policy=SLIPWAY_CACHE, output_materializers=TextSetMaterializer)
def preprocess_documents(
    corpus: str | None = None,
    source_format: SourceFormat = "auto",
    min_chars: int = 20,
    csv_id_column: str = "id",
    csv_text_column: str = "text",
    csv_title_column: str | None = "title",
    csv_metadata_columns: list[str] | None = None,
    source_fingerprint: str | None = None,
) -> Annotated[DocumentSet, "documents"]:
    """Cleaned, de-duplicated documents from ``corpus`` (default: shared XQuAD passages).

    ``source_fingerprint`` (see :func:`corpus_fingerprint`) is only part of the cache key: an
    edited corpus at the same path is read again, an unchanged one comes from the cache."""
    path = Path(corpus) if corpus else default_corpus(get_settings().data_dir)
    columns = CsvColumns(csv_id_column, csv_text_column, csv_title_column,
                         tuple(csv_metadata_columns or ()))
    return read_corpus(path, source_format, min_chars, columns)


def corpus_fingerprint(corpus: str | None) -> str:
    """The fingerprint of the corpus a run will read (files, sizes, modification times)."""
    return source_fingerprint(Path(corpus) if corpus else default_corpus(get_settings().data_dir))


@step(cache_policy=SLIPWAY_CACHE, output_materializers=TextSetMaterializer)
def chunk_corpus(
    documents: DocumentSet,
    chunk_tokens: int = 200,
    overlap_tokens: int = 32,
    embedder_path: str | None = None,
) -> Annotated[ChunkSet, "chunks"]:
    """Chunks sized in the embedder's own tokens, cut at whitespace, with overlap."""
    source = embedder_source(Path(embedder_path) if embedder_path else ModelSettings().embedder_path)
    return chunk_documents(documents.documents, load_tokenizer(source.path), chunk_tokens,
                           overlap_tokens, tokenizer_name=source.origin)
