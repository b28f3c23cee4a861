"""Steps: read and clean the document corpus; cut it into chunks for the embedder; the
evaluation set that judges it and the sample of it that calibrates the parity gate."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from zenml import step

from materializers.documents import TextSetMaterializer
from slipway.config import ModelSettings
from slipway.documents import DocumentSet, default_corpus, read_corpus, source_fingerprint
from slipway.documents.chunking import ChunkSet, chunk_documents, load_tokenizer
from slipway.documents.demo import evaluation_dir
from slipway.documents.readers import CsvColumns, SourceFormat
from slipway.models import embedder_source
from slipway.onnx.calibration import CalibrationSet, calibration_set
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
    """Cleaned, de-duplicated documents from ``corpus`` (default: the packaged demo corpus,
    XQuAD's 240 English passages).

    ``source_fingerprint`` (see :func:`corpus_fingerprint`) is only part of the cache key: an
    edited corpus at the same path is read again, an unchanged one comes from the cache."""
    path = Path(corpus) if corpus else default_corpus()
    columns = CsvColumns(
        csv_id_column, csv_text_column, csv_title_column, tuple(csv_metadata_columns or ())
    )
    return read_corpus(path, source_format, min_chars, columns)


def corpus_fingerprint(corpus: str | None) -> str:
    """The fingerprint of the corpus a run will read (files, sizes, modification times)."""
    return source_fingerprint(Path(corpus) if corpus else default_corpus())


@step(cache_policy=SLIPWAY_CACHE, output_materializers=TextSetMaterializer)
def chunk_corpus(
    documents: DocumentSet,
    chunk_tokens: int = 200,
    overlap_tokens: int = 32,
    embedder_path: str | None = None,
) -> Annotated[ChunkSet, "chunks"]:
    """Chunks sized in the embedder's own tokens, cut at whitespace, with overlap."""
    source = embedder_source(
        Path(embedder_path) if embedder_path else ModelSettings().embedder_path
    )
    return chunk_documents(
        documents.documents,
        load_tokenizer(source.path),
        chunk_tokens,
        overlap_tokens,
        tokenizer_name=source.origin,
    )


@step(enable_cache=False)
def evaluation_set(
    corpus: str | None = None, eval_dir: str | None = None
) -> Annotated[str, "eval_dir"]:
    """The BEIR folder whose judgements gate the index of ``corpus`` (``""``: no gate): the
    given ``eval_dir`` (an error naming ``index.eval_dir`` when it is missing), the packaged
    judgements for the packaged demo corpus, else none, with a warning."""
    found = evaluation_dir(corpus, eval_dir)
    return str(found) if found else ""


@step(cache_policy=SLIPWAY_CACHE)
def calibration_sample(
    chunks: ChunkSet, corpus: str | None = None, limit: int = 256, seed: int = 0
) -> Annotated[CalibrationSet, "calibration_set"]:
    """A seeded sample of the chunks of ``corpus`` (the texts the embedder will see) on which
    the parity gate compares the ONNX embedder with its original."""
    return calibration_set(
        (c.text for c in chunks.chunks), corpus or str(default_corpus()), limit, seed
    )
