"""LangChain adapters: a retriever over Slipway hybrid search and Slipway embeddings,
either in-process (a searcher / embedder object) or over HTTP (a Slipway server)."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Sequence
from typing import Any, Literal, Self

import httpx
from langchain_core.callbacks import (
    AsyncCallbackManagerForRetrieverRun,
    CallbackManagerForRetrieverRun,
)
from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.retrievers import BaseRetriever
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, SecretStr, model_validator

from slipway.access import Reader

__all__ = ["SlipwayAPIError", "SlipwayEmbeddings", "SlipwayRetriever"]


class SlipwayAPIError(RuntimeError):
    """A Slipway server answered with an error status."""

    def __init__(
        self,
        status: int,
        message: str,
        type: str | None = None,
        code: str | None = None,
        param: str | None = None,
    ) -> None:
        self.status, self.message, self.type, self.code, self.param = (
            status,
            message,
            type,
            code,
            param,
        )
        detail = ", ".join(
            f"{k}={v}" for k, v in (("type", type), ("code", code), ("param", param)) if v
        )
        super().__init__(
            f"Slipway server error {status}: {message}" + (f" ({detail})" if detail else "")
        )


def _check(response: httpx.Response) -> dict[str, Any]:
    """The JSON body of a successful response; :class:`SlipwayAPIError` otherwise."""
    if response.status_code < 400:
        return response.json()
    try:
        error = response.json().get("error") or {}
    except ValueError:
        error = {}
    if not isinstance(error, dict):
        error = {"message": str(error)}
    message = error.get("message") or response.text or response.reason_phrase
    raise SlipwayAPIError(
        response.status_code, str(message), error.get("type"), error.get("code"), error.get("param")
    )


class _HttpConfig(BaseModel):
    """Where a Slipway server is and how to authenticate."""

    base_url: str | None = None
    api_key: SecretStr | None = None
    timeout: float = 30.0

    def _url(self, route: str) -> str:
        assert self.base_url is not None
        return self.base_url.rstrip("/") + route

    def _headers(self) -> dict[str, str]:
        if self.api_key is None:
            return {}
        return {"Authorization": f"Bearer {self.api_key.get_secret_value()}"}


def _one_mode(local: bool, base_url: str | None, what: str) -> None:
    """Exactly one of the in-process object and ``base_url`` must be set."""
    if local == (base_url is not None):
        raise ValueError(
            f"Configure exactly one of {what} (in-process) and base_url (HTTP); "
            f"got {'both' if local else 'neither'}."
        )


class SlipwayRetriever(_HttpConfig, BaseRetriever):
    """Slipway hybrid search as a LangChain retriever: in-process (``searcher`` + ``index``)
    or over HTTP (``base_url`` + ``api_key``, ``POST /v1/search``).

    Document access control holds in both: over HTTP the server reads documents as the API
    key's principals; in-process as ``principals`` (none: only public documents, under
    ``acl_default``), filtered in both retrievers and checked again on every hit."""

    k: int = Field(default=4, ge=1)
    filters: dict[str, str | list[str]] | None = None
    graph: bool | None = Field(
        default=None,
        description="Fuse graph retrieval; None: over HTTP as the index gate decided, "
        "in-process when the searcher has a graph retriever.",
    )
    principals: list[str] = Field(
        default_factory=list, description="Whom an in-process search reads documents as."
    )
    acl_default: Literal["public", "deny"] = "public"
    searcher: Any = None  # slipway.retrieval.hybrid.HybridSearcher
    index: Any = None  # slipway.retrieval.index.OpenIndex: hydrates the searcher's hits

    _local: Any = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _check_mode(self) -> Self:
        _one_mode(self.searcher is not None, self.base_url, "searcher")
        if self.searcher is None:
            return self
        if self.index is None:
            raise ValueError("An in-process retriever needs the index (an OpenIndex) too.")
        if self.graph and getattr(self.searcher, "expander", None) is None:
            raise ValueError("graph=True needs a searcher with a graph expander.")
        self._local = self.searcher
        if self.graph is False and getattr(self.searcher, "expander", None) is not None:
            self._local = copy.copy(self.searcher)  # the same searcher, without the graph
            self._local.expander = None
        return self

    @classmethod
    def from_published(
        cls,
        index_name: str,
        embedder: Any,
        *,
        settings: Any = None,
        fusion: Any = None,
        expander: Any = None,
        **kwargs: Any,
    ) -> Self:
        """An in-process retriever over the published version of index ``index_name``."""
        from slipway.retrieval.stores import published_searcher

        opened, searcher = published_searcher(index_name, embedder, settings, fusion, expander)
        kwargs.setdefault("graph", expander is not None)
        return cls(searcher=searcher, index=opened, **kwargs)

    def _payload(self, query: str) -> dict[str, Any]:
        return {"query": query, "top_k": self.k, "filters": self.filters, "graph": self.graph}

    def _reader(self) -> Reader:
        return Reader(frozenset(self.principals), self.acl_default)

    def _local_filters(self) -> Any:
        reader = self._reader()
        return reader.restrict(self.filters, self.index.open_to_all(reader)) or None

    def _local_documents(self, hits: Sequence[tuple[str, float]]) -> list[Document]:
        version = getattr(self.index, "version", None)
        reader = self._reader()
        return [
            _document(h.model_dump(exclude_none=True), version)
            for h in self.index.hydrate(hits)
            if self.index.chunk_readable(h.id, reader)
        ]

    @staticmethod
    def _http_documents(body: dict[str, Any]) -> list[Document]:
        return [_document(hit, body.get("index_version")) for hit in body["results"]]

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun
    ) -> list[Document]:
        """Search synchronously."""
        if self._local is not None:
            hits = self._local.search([query], self.k, self._local_filters())
            return self._local_documents(hits[0])
        with httpx.Client(timeout=self.timeout) as client:
            response = client.post(
                self._url("/v1/search"), json=self._payload(query), headers=self._headers()
            )
        return self._http_documents(_check(response))

    async def _aget_relevant_documents(
        self, query: str, *, run_manager: AsyncCallbackManagerForRetrieverRun
    ) -> list[Document]:
        """Search without blocking the event loop."""
        if self._local is not None:
            hits = await self._local.search_async([query], self.k, self._local_filters())
            return self._local_documents(hits[0])
        async with httpx.AsyncClient(timeout=self.timeout) as client:
            response = await client.post(
                self._url("/v1/search"), json=self._payload(query), headers=self._headers()
            )
        return self._http_documents(_check(response))


def _document(hit: dict[str, Any], index_version: str | None) -> Document:
    """A LangChain document of one search hit (its id is the chunk id)."""
    metadata = {
        **hit.get("metadata", {}),
        "id": hit["id"],
        "doc_id": hit["doc_id"],
        "score": hit["score"],
        "title": hit["title"],
        "position": hit["position"],
    }
    if index_version is not None:
        metadata["index_version"] = index_version
    return Document(id=hit["id"], page_content=hit["text"], metadata=metadata)


class SlipwayEmbeddings(_HttpConfig, Embeddings):
    """Slipway sentence embeddings for LangChain: in-process (``embedder``, anything with
    ``embed(texts) -> ndarray``) or over HTTP (``POST /v1/embed``, in batches)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    embedder: Any = None  # slipway.embedding.Embedder, e.g. OnnxEmbedder
    batch_size: int = Field(default=64, ge=1)

    @model_validator(mode="after")
    def _check_mode(self) -> Self:
        _one_mode(self.embedder is not None, self.base_url, "embedder")
        return self

    def _batches(self, texts: Sequence[str]) -> list[list[str]]:
        return [list(texts[i : i + self.batch_size]) for i in range(0, len(texts), self.batch_size)]

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """One vector per text, in order."""
        if not texts:
            return []
        if self.embedder is not None:
            return [[float(x) for x in row] for row in self.embedder.embed(list(texts))]
        out: list[list[float]] = []
        with httpx.Client(timeout=self.timeout) as client:
            for batch in self._batches(texts):
                response = client.post(
                    self._url("/v1/embed"), json={"texts": batch}, headers=self._headers()
                )
                out.extend(_check(response)["embeddings"])
        return out

    def embed_query(self, text: str) -> list[float]:
        """The vector of one query."""
        return self.embed_documents([text])[0]

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        """:meth:`embed_documents` without blocking the event loop."""
        if self.embedder is not None or not texts:
            return await asyncio.to_thread(self.embed_documents, texts)
        out: list[list[float]] = []
        async with httpx.AsyncClient(timeout=self.timeout) as client:
            for batch in self._batches(texts):
                response = await client.post(
                    self._url("/v1/embed"), json={"texts": batch}, headers=self._headers()
                )
                out.extend(_check(response)["embeddings"])
        return out

    async def aembed_query(self, text: str) -> list[float]:
        """:meth:`embed_query` without blocking the event loop."""
        return (await self.aembed_documents([text]))[0]
