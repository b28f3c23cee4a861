"""Pinecone serverless behind the versioned vector-store protocol: one namespace per version.

A version is written in full into its own namespace (``<prefix><version>``); nothing carries
over from the base, so the refresh writes every row. Pinecone is eventually consistent, so
``commit`` waits until the namespace reports exactly the rows this session wrote. Transient
failures (5xx, 408, 429, connection errors) are retried; a rejected API key or an unknown
index is a RuntimeError that names the setting to change.
"""

from __future__ import annotations

import contextlib
import logging
import string
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import quote, unquote

import numpy as np
from tenacity import (
    Retrying,
    before_sleep_log,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
)

from slipway.retrieval.dense import Filters, Metadata, filter_values
from slipway.retrieval.fusion import Hit

logger = logging.getLogger(__name__)

DELETE_MAX = 1000  # ids per delete request, Pinecone's limit
UPSERT_MAX = 1000  # vectors per upsert request, Pinecone's limit
TOP_K_MAX = 10_000  # Pinecone's largest top_k
QUERY_THREADS = 8  # concurrent queries of one search() call
FETCH_MAX = 1_000  # ids per fetch (Pinecone serverless allows up to 1,000)

_KEY_HINT = "Set SLIPWAY_PINECONE_API_KEY to a valid key of the project that owns the index."
_INDEX_HINT = (
    "Set SLIPWAY_PINECONE_INDEX to the name of an existing index, or "
    "SLIPWAY_PINECONE_HOST to its host."
)


# Pinecone ids must be ASCII: other characters (and '%') are percent-encoded on the wire.
_ID_SAFE = "".join(c for c in string.printable if c not in "%\t\n\r\x0b\x0c")


def wire_id(value: str) -> str:
    """The Pinecone id of a chunk: itself when printable ASCII without '%', else UTF-8 %-encoded."""
    return quote(value, safe=_ID_SAFE)


def chunk_id(value: str) -> str:
    """The chunk id back from its Pinecone id."""
    return unquote(value)


def pinecone_filter(filters: Filters | None) -> dict[str, Any] | None:
    """Our filters in Pinecone's syntax: ``{key: {"$in": [...]}}``, several keys under ``$and``."""
    clauses = []
    for key, values in filter_values(filters).items():
        if key.startswith("$"):
            raise ValueError(f"Filter key {key!r} may not start with '$'.")
        clauses.append({key: {"$in": values}})
    if not clauses:
        return None
    return clauses[0] if len(clauses) == 1 else {"$and": clauses}


def _transient(exc: BaseException) -> bool:
    """Whether a Pinecone error is worth retrying: 5xx, 408, 429, timeouts, lost connections."""
    from pinecone.errors import ApiError, PineconeConnectionError, PineconeTimeoutError

    if isinstance(exc, PineconeConnectionError | PineconeTimeoutError):
        return True
    status = getattr(exc, "status_code", None) if isinstance(exc, ApiError) else None
    return status is not None and (status >= 500 or status in (408, 429))


class _Index:
    """A Pinecone index client whose calls retry transient failures and explain fatal ones."""

    def __init__(self, client: Any, host: str, attempts: int = 4, wait: float = 1.0) -> None:
        self.client = client
        self.host = host
        self.attempts = attempts
        self.wait = wait

    def __call__(self, method: str, /, **kwargs: Any) -> Any:
        """``client.<method>(**kwargs)``, retried; auth and connection failures as RuntimeError."""
        from pinecone.errors import (
            ForbiddenError,
            PineconeConnectionError,
            PineconeTimeoutError,
            UnauthorizedError,
        )

        retrying = Retrying(
            retry=retry_if_exception(_transient),
            stop=stop_after_attempt(self.attempts),
            wait=wait_exponential(multiplier=self.wait, max=30),
            before_sleep=before_sleep_log(logger, logging.WARNING),
            reraise=True,
        )
        try:
            return retrying(getattr(self.client, method), **kwargs)
        except (UnauthorizedError, ForbiddenError) as exc:
            raise _auth_error(exc, self.host) from exc
        except (PineconeConnectionError, PineconeTimeoutError) as exc:
            raise RuntimeError(
                f"Cannot reach the Pinecone index at {self.host} after {self.attempts} attempts "
                f"({exc}). Check SLIPWAY_PINECONE_HOST (or SLIPWAY_PINECONE_INDEX) and the "
                "network."
            ) from exc

    def count(self, namespace: str) -> int:
        """Vectors in ``namespace`` per describe_index_stats; 0 when it does not exist."""
        summary = self("describe_index_stats").namespaces.get(namespace)
        return int(summary.vector_count) if summary is not None else 0


def _auth_error(exc: Any, where: str) -> RuntimeError:
    """The clear error for a 401/403 from Pinecone."""
    status = getattr(exc, "status_code", "")
    what = "rejected the API key" if status == 401 else "refused access with this API key"
    return RuntimeError(
        f"Pinecone {what} (HTTP {status}: {getattr(exc, 'message', exc)}) at {where}. {_KEY_HINT}"
    )


class PineconeReader:
    """One committed version: a namespace of a Pinecone index, read-only."""

    def __init__(self, index: _Index, namespace: str) -> None:
        self.index = index
        self.namespace = namespace

    def _query(self, vector: np.ndarray, k: int, flt: dict[str, Any] | None) -> list[Hit]:
        response = self.index(
            "query",
            vector=vector.tolist(),
            top_k=k,
            namespace=self.namespace,
            filter=flt,
            include_values=False,
            include_metadata=False,
        )
        return [(chunk_id(m.id), float(m.score)) for m in response.matches]

    def search(
        self, vectors: np.ndarray, k: int = 10, filters: Filters | None = None
    ) -> list[list[Hit]]:
        """Top ``k`` (id, cosine similarity) per query vector, one query each, a few at a time."""
        vectors = np.asarray(vectors, dtype=np.float32)
        if len(vectors) == 0:
            return []
        flt = pinecone_filter(filters)
        k = min(k, TOP_K_MAX)
        if k < 1:
            return [[] for _ in vectors]
        if len(vectors) == 1:
            return [self._query(vectors[0], k, flt)]
        with ThreadPoolExecutor(min(QUERY_THREADS, len(vectors))) as pool:
            return list(pool.map(lambda v: self._query(v, k, flt), vectors))

    def vectors(self, ids: Sequence[str]) -> dict[str, np.ndarray]:
        """The stored vectors of the chunks ``ids`` that this namespace holds (one fetch per
        ``FETCH_MAX`` ids)."""
        unique = list(dict.fromkeys(ids))
        out: dict[str, np.ndarray] = {}
        for start in range(0, len(unique), FETCH_MAX):
            part = [wire_id(i) for i in unique[start : start + FETCH_MAX]]
            response = self.index("fetch", ids=part, namespace=self.namespace)
            for key, vector in response.vectors.items():
                out[chunk_id(key)] = np.asarray(vector.values, dtype=np.float32)
        return out

    def count(self) -> int:
        """Vectors in this version, as Pinecone's index stats report them."""
        return self.index.count(self.namespace)

    def ids(self) -> set[str]:
        """Every chunk id in this version, page by page."""
        from pinecone.errors import NotFoundError

        out: set[str] = set()
        token = None
        while True:
            try:
                page = self.index(
                    "list_paginated", namespace=self.namespace, pagination_token=token
                )
            except NotFoundError:
                return out
            out.update(chunk_id(item.id) for item in page.vectors if item.id is not None)
            token = page.pagination.next if page.pagination is not None else None
            if not token:
                return out


def _open_index(pc: Any, index_name: str | None, host: str | None) -> tuple[str, Any]:
    """The index host (looked up by name unless given) and a data-plane client for it."""
    from pinecone.errors import (
        ForbiddenError,
        NotFoundError,
        PineconeConnectionError,
        PineconeTimeoutError,
        PineconeValueError,
        UnauthorizedError,
    )

    if not host:
        try:
            host = pc.indexes.describe(index_name).host
        except (UnauthorizedError, ForbiddenError) as exc:
            raise _auth_error(exc, "the Pinecone control plane") from exc
        except NotFoundError as exc:
            raise RuntimeError(
                f"Pinecone has no index named {index_name!r} in the API key's "
                f"project. {_INDEX_HINT}"
            ) from exc
        except (PineconeConnectionError, PineconeTimeoutError) as exc:
            raise RuntimeError(
                f"Cannot reach the Pinecone control plane to look up index "
                f"{index_name!r} ({exc}). Check the network, or set "
                "SLIPWAY_PINECONE_HOST to skip the lookup."
            ) from exc
        if not host:
            raise RuntimeError(
                f"Pinecone index {index_name!r} has no host yet; wait until it "
                "is Ready, or set SLIPWAY_PINECONE_HOST."
            )
    try:
        return host, pc.index(host=host)
    except PineconeValueError as exc:
        raise RuntimeError(
            f"Invalid Pinecone host {host!r} ({exc}). Set SLIPWAY_PINECONE_HOST "
            "to the index host shown in the Pinecone console, e.g. "
            "https://<index>-<id>.svc.<region>.pinecone.io."
        ) from exc


class PineconeStore:
    """One Pinecone index; each index version is its own namespace, written from scratch."""

    carries_over = False

    def __init__(
        self,
        api_key: str,
        index_name: str | None = None,
        host: str | None = None,
        namespace_prefix: str = "slipway-",
        batch_size: int = 200,
        consistency_timeout: float = 300.0,
    ) -> None:
        from pinecone import Pinecone

        if not api_key:
            raise RuntimeError(f"No Pinecone API key. {_KEY_HINT}")
        if not (index_name or host):
            raise RuntimeError(f"No Pinecone index configured. {_INDEX_HINT}")
        if not namespace_prefix:
            raise ValueError(
                "namespace_prefix must not be empty: gc() deletes every namespace "
                "under it that it is not told to keep."
            )
        if not 1 <= batch_size <= UPSERT_MAX:
            raise ValueError(f"batch_size must be between 1 and {UPSERT_MAX}, got {batch_size}.")
        self.namespace_prefix = namespace_prefix
        self.batch_size = batch_size
        self.consistency_timeout = consistency_timeout
        self._pc = Pinecone(api_key=api_key)
        try:
            host, client = _open_index(self._pc, index_name, host)
        except BaseException:
            self._pc.close()
            raise
        self.index = _Index(client, host)
        self._written: dict[str, set[str]] = {}

    def namespace(self, version: str) -> str:
        """The namespace holding ``version``."""
        return f"{self.namespace_prefix}{version}"

    def _rows(self, version: str) -> set[str]:
        if version not in self._written:
            raise RuntimeError(f"stage({version!r}) before writing to it.")
        return self._written[version]

    def _settle(self, namespace: str, expected: int, doing: str) -> None:
        """Poll the index stats until ``namespace`` holds ``expected`` vectors, or time out."""
        deadline = time.monotonic() + self.consistency_timeout
        delay = 0.05
        while (seen := self.index.count(namespace)) != expected:
            if time.monotonic() >= deadline:
                raise RuntimeError(
                    f"Pinecone namespace {namespace!r} reports {seen} vectors, expected "
                    f"{expected}, {self.consistency_timeout:.0f}s after {doing}. Pinecone is "
                    "eventually consistent; run the refresh again, or raise the timeout."
                )
            time.sleep(delay)
            delay = min(delay * 2, 2.0)

    def stage(self, version: str, base: str | None, dimension: int) -> None:
        """Start ``version`` as an empty namespace, deleting any unfinished attempt's rows."""
        from pinecone.errors import NotFoundError

        stats = self.index("describe_index_stats")
        if stats.dimension and stats.dimension != dimension:
            raise RuntimeError(
                f"The Pinecone index at {self.index.host} has dimension {stats.dimension}, the "
                f"embedder {dimension}. Create an index of dimension {dimension} (metric cosine) "
                f"and point SLIPWAY_PINECONE_INDEX or SLIPWAY_PINECONE_HOST at it."
            )
        if stats.metric and stats.metric != "cosine":
            raise RuntimeError(
                f"The Pinecone index at {self.index.host} uses metric {stats.metric!r}; slipway "
                "needs 'cosine'. Create an index with metric cosine and point "
                "SLIPWAY_PINECONE_INDEX or SLIPWAY_PINECONE_HOST at it."
            )
        namespace = self.namespace(version)
        try:
            self.index("delete_namespace", name=namespace)
            logger.info("Deleted namespace %s left by an unfinished attempt", namespace)
        except NotFoundError:
            pass
        self._settle(namespace, 0, "deleting an unfinished attempt")
        self._written[version] = set()

    def add(
        self,
        version: str,
        ids: Sequence[str],
        vectors: np.ndarray,
        metadata: Sequence[Metadata],
    ) -> None:
        """Upsert rows in batches of ``batch_size``; metadata carries ``doc_id``."""
        written = self._rows(version)
        if not len(ids) == len(vectors) == len(metadata):
            raise ValueError(
                f"{len(ids)} ids, {len(vectors)} vectors and {len(metadata)} "
                "metadata rows; they must match."
            )
        values = np.ascontiguousarray(vectors, dtype=np.float32)
        namespace = self.namespace(version)
        for start in range(0, len(ids), self.batch_size):
            end = start + self.batch_size
            rows = [
                {
                    "id": wire_id(i),
                    "values": v.tolist(),
                    "metadata": {"doc_id": i.split("#")[0], **m},
                }
                for i, v, m in zip(
                    ids[start:end], values[start:end], metadata[start:end], strict=True
                )
            ]
            self.index("upsert", vectors=rows, namespace=namespace)
            written.update(ids[start:end])

    def delete(self, version: str, ids: Sequence[str]) -> None:
        """Remove rows by id, 1000 per request; ids not present are ignored."""
        from pinecone.errors import NotFoundError

        written = self._rows(version)
        namespace = self.namespace(version)
        for start in range(0, len(ids), DELETE_MAX):
            part = [wire_id(i) for i in ids[start : start + DELETE_MAX]]
            # a namespace that does not exist (yet) has nothing to delete
            with contextlib.suppress(NotFoundError):
                self.index("delete", ids=part, namespace=namespace)
            written.difference_update(ids[start : start + DELETE_MAX])

    def commit(self, version: str) -> str:
        """Wait until the namespace holds exactly the rows written; the namespace is the handle."""
        expected = len(self._rows(version))
        namespace = self.namespace(version)
        self._settle(namespace, expected, f"writing {expected} rows")
        del self._written[version]
        return namespace

    def reader(self, handle: str) -> PineconeReader:
        """The committed version ``handle`` (a namespace name), read-only."""
        if not handle.startswith(self.namespace_prefix):
            raise LookupError(
                f"{handle!r} is not a namespace of this store (prefix {self.namespace_prefix!r})."
            )
        return PineconeReader(self.index, handle)

    def _namespaces(self) -> list[str]:
        """Every namespace of the index that starts with the prefix."""
        names: list[str] = []
        token = None
        while True:
            page = self.index(
                "list_namespaces_paginated", prefix=self.namespace_prefix, pagination_token=token
            )
            names.extend(ns.name for ns in page.namespaces)
            token = page.pagination.next if page.pagination is not None else None
            if not token:
                return [n for n in names if n.startswith(self.namespace_prefix)]

    def gc(self, keep: Sequence[str]) -> None:
        """Delete every namespace under the prefix that is not in ``keep``."""
        from pinecone.errors import NotFoundError

        for namespace in sorted(set(self._namespaces()) - set(keep)):
            try:
                self.index("delete_namespace", name=namespace)
                logger.info("Deleted Pinecone namespace %s", namespace)
            except NotFoundError:
                pass

    def close(self) -> None:
        """Close the HTTP connections."""
        self.index.client.close()
        self._pc.close()
