"""The vector store an index uses, chosen by configuration (``SLIPWAY_VECTOR_STORE``)."""

from __future__ import annotations

from slipway.config import IndexSettings, get_settings
from slipway.embedding import Embedder
from slipway.retrieval.dense import LanceDBStore, VectorStore
from slipway.retrieval.hybrid import Expander, FusionConfig, HybridSearcher
from slipway.retrieval.index import IndexDir, OpenIndex, open_published
from slipway.retrieval.rerank import configured_reranker


def index_dir(name: str, settings: IndexSettings | None = None) -> IndexDir:
    """The named index under ``SLIPWAY_INDEX_ROOT`` (default ``<home>/indexes``)."""
    settings = settings or IndexSettings()
    return IndexDir(settings.index_root or get_settings().home / "indexes", name)


def vector_store(index: IndexDir, settings: IndexSettings | None = None) -> VectorStore:
    """LanceDB inside the index directory, or Pinecone (one namespace per index version)."""
    settings = settings or IndexSettings()
    if settings.vector_store == "lancedb":
        return LanceDBStore(index.lance_dir)
    from slipway.retrieval.pinecone import PineconeStore

    if settings.pinecone_api_key is None:
        raise RuntimeError(
            "SLIPWAY_VECTOR_STORE=pinecone needs SLIPWAY_PINECONE_API_KEY "
            "(or a ZenML secret exported to the environment)."
        )
    return PineconeStore(
        api_key=settings.pinecone_api_key.get_secret_value(),
        index_name=settings.pinecone_index,
        host=settings.pinecone_host,
        namespace_prefix=f"{index.name}.",
    )  # "." never occurs in a name


def published_searcher(
    name: str,
    embedder: Embedder,
    settings: IndexSettings | None = None,
    fusion: FusionConfig | None = None,
    expander: Expander | None = None,
) -> tuple[OpenIndex, HybridSearcher]:
    """The published version of index ``name`` and a hybrid searcher over it, re-ranking with
    ``SLIPWAY_RERANKER_PATH`` when set and fusing ``expander``'s graph ranking when given
    (e.g. ``GraphRetriever.search_many``). The embedder must be the one that built the index."""
    settings = settings or IndexSettings()
    index = index_dir(name, settings)
    opened = open_published(index, vector_store(index, settings))
    reranker = configured_reranker(settings.reranker_path)
    return opened, HybridSearcher(
        embedder,
        opened.dense,
        opened.sparse,
        fusion,
        reranker,
        text_of=opened.text_of,
        expander=expander,
    )
