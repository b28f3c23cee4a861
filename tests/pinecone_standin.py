"""A local stand-in for the Pinecone data-plane REST API (and the one control-plane call).

It serves what the ``pinecone`` SDK (10.x, API version 2026-07) sends for upsert, query,
delete, describe_index_stats, list, and the namespace endpoints, over plain HTTP on
127.0.0.1, the way Pinecone Local is reached. Vectors live in memory, one dict per namespace;
scores are cosine similarities computed with numpy. Test hooks: ``fail_next`` (answer the next
requests with an error status) and ``stale_stats`` (let describe_index_stats lag behind writes,
as Pinecone's eventually consistent counts do).
"""

from __future__ import annotations

import base64
import socket
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import uvicorn
from fastapi import FastAPI, Query, Request
from fastapi.responses import JSONResponse

UPSERT_MAX = 1000  # vectors per upsert request, Pinecone's limit
DELETE_MAX = 1000  # ids per delete request
LIST_LIMIT = 100  # default and maximum page size of /vectors/list and /namespaces


@dataclass
class Row:
    """One stored vector."""

    values: np.ndarray
    metadata: dict[str, Any]


@dataclass
class State:
    """The index's contents and the test hooks."""

    api_key: str
    dimension: int | None = None
    index_name: str = "slipway-test"
    host: str = ""
    namespaces: dict[str, dict[str, Row]] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)
    failures: list[int] = field(default_factory=list)
    page_size: int = LIST_LIMIT  # largest page of /vectors/list and /namespaces
    stale_reads: int = 0
    stale_counts: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def reset(self) -> None:
        """Forget every vector, request and hook."""
        with self.lock:
            self.namespaces.clear()
            self.requests.clear()
            self.failures.clear()
            self.page_size = LIST_LIMIT
            self.stale_reads = 0
            self.stale_counts = {}

    def fail_next(self, count: int, status: int = 503) -> None:
        """Answer the next ``count`` data-plane requests with ``status``."""
        with self.lock:
            self.failures.extend([status] * count)

    def stale_stats(self, reads: int) -> None:
        """Make the next ``reads`` describe_index_stats calls report the counts as of now."""
        with self.lock:
            self.stale_reads = reads
            self.stale_counts = self.counts()

    def counts(self) -> dict[str, int]:
        """Vectors per non-empty namespace."""
        return {ns: len(rows) for ns, rows in self.namespaces.items() if rows}


def _error(status: int, code: str, message: str) -> JSONResponse:
    """An error body shaped like Pinecone's."""
    return JSONResponse(
        {"error": {"code": code, "message": message}, "status": status}, status_code=status
    )


def _token(last: str) -> str:
    return base64.urlsafe_b64encode(last.encode()).decode()


def _after(token: str | None) -> str | None:
    return base64.urlsafe_b64decode(token.encode()).decode() if token else None


def _page(names: list[str], token: str | None, limit: int) -> tuple[list[str], str | None]:
    """One page of sorted ``names`` after ``token``, and the next page's token."""
    start = _after(token)
    rest = [n for n in sorted(names) if start is None or n > start]
    page = rest[:limit]
    return page, (_token(page[-1]) if len(rest) > limit else None)


def _condition(value: Any, condition: Any) -> bool:
    """Whether one metadata value satisfies one field's condition (a list value, as Pinecone
    treats it: ``$eq``/``$in`` when any item matches, ``$ne``/``$nin`` when none does)."""
    if not isinstance(condition, Mapping):
        condition = {"$eq": condition}
    items = value if isinstance(value, list) else [value]
    for op, operand in condition.items():
        if op == "$eq":
            ok = operand in items
        elif op == "$ne":
            ok = operand not in items
        elif op == "$in":
            ok = any(v in operand for v in items)
        elif op == "$nin":
            ok = not any(v in operand for v in items)
        else:
            raise ValueError(f"unsupported filter operator {op!r}")
        if not ok:
            return False
    return True


def matches_filter(metadata: Mapping[str, Any], flt: Mapping[str, Any] | None) -> bool:
    """Pinecone filter semantics for ``$eq``, ``$ne``, ``$in``, ``$nin``, ``$and``, ``$or``."""
    for key, condition in (flt or {}).items():
        if key == "$and":
            ok = all(matches_filter(metadata, part) for part in condition)
        elif key == "$or":
            ok = any(matches_filter(metadata, part) for part in condition)
        elif key.startswith("$"):
            raise ValueError(f"unsupported filter operator {key!r}")
        else:
            ok = key in metadata and _condition(metadata[key], condition)
        if not ok:
            return False
    return True


def create_app(state: State) -> FastAPI:
    """The FastAPI app serving ``state``."""
    app = FastAPI()

    @app.middleware("http")
    async def gate(request: Request, call_next: Any) -> Any:
        with state.lock:
            state.requests.append((request.method, request.url.path))
            failure = state.failures.pop(0) if state.failures else None
        if request.headers.get("api-key") != state.api_key:
            return _error(401, "UNAUTHENTICATED", "Invalid API Key")
        if failure is not None:
            return _error(
                failure,
                "UNAVAILABLE" if failure >= 500 else "INVALID_ARGUMENT",
                f"Injected failure {failure}",
            )
        return await call_next(request)

    @app.exception_handler(ValueError)
    async def invalid(request: Request, exc: ValueError) -> JSONResponse:
        return _error(400, "INVALID_ARGUMENT", str(exc))

    @app.get("/indexes/{name}")
    async def describe_index(name: str) -> Any:
        if name != state.index_name:
            return _error(404, "NOT_FOUND", f"Resource {name} not found")
        return {
            "name": name,
            "host": state.host,
            "status": {"ready": True, "state": "Ready"},
            "schema": {
                "fields": {
                    "values": {
                        "type": "dense_vector",
                        "dimension": state.dimension or 0,
                        "metric": "cosine",
                    }
                }
            },
            "deployment": {"deployment_type": "managed", "cloud": "aws", "region": "us-east-1"},
            "deletion_protection": "disabled",
        }

    @app.post("/vectors/upsert")
    async def upsert(request: Request) -> Any:
        body = await request.json()
        vectors = body.get("vectors") or []
        if len(vectors) > UPSERT_MAX:
            return _error(
                400,
                "INVALID_ARGUMENT",
                f"Upsert of {len(vectors)} vectors exceeds the limit of {UPSERT_MAX}",
            )
        rows = {}
        for vector in vectors:
            values = np.asarray(vector["values"], dtype=np.float32)
            if state.dimension is None:
                state.dimension = len(values)
            if len(values) != state.dimension:
                return _error(
                    400,
                    "INVALID_ARGUMENT",
                    f"Vector dimension {len(values)} does not match the dimension "
                    f"of the index {state.dimension}",
                )
            rows[vector["id"]] = Row(values, dict(vector.get("metadata") or {}))
        with state.lock:
            state.namespaces.setdefault(body.get("namespace", ""), {}).update(rows)
        return {"upsertedCount": len(vectors)}

    @app.post("/query")
    async def query(request: Request) -> Any:
        body = await request.json()
        namespace = body.get("namespace", "")
        rows = state.namespaces.get(namespace, {})
        kept = [(i, r) for i, r in rows.items() if matches_filter(r.metadata, body.get("filter"))]
        matches = []
        if kept and "vector" in body:
            q = np.asarray(body["vector"], dtype=np.float32)
            m = np.stack([r.values for _, r in kept])
            norms = np.linalg.norm(m, axis=1) * np.linalg.norm(q)
            scores = (m @ q) / np.where(norms == 0, 1.0, norms)
            for j in np.argsort(-scores, kind="stable")[: int(body["topK"])]:
                i, r = kept[j]
                match: dict[str, Any] = {"id": i, "score": float(scores[j]), "values": []}
                if body.get("includeValues"):
                    match["values"] = r.values.tolist()
                if body.get("includeMetadata"):
                    match["metadata"] = r.metadata
                matches.append(match)
        return {"matches": matches, "namespace": namespace, "usage": {"readUnits": 1}}

    @app.get("/vectors/fetch")
    async def fetch(request: Request) -> Any:
        namespace = request.query_params.get("namespace", "")
        rows = state.namespaces.get(namespace, {})
        wanted = request.query_params.getlist("ids")
        vectors = {
            i: {"id": i, "values": rows[i].values.tolist(), "metadata": rows[i].metadata}
            for i in wanted
            if i in rows
        }
        return {"vectors": vectors, "namespace": namespace, "usage": {"readUnits": 1}}

    @app.post("/vectors/delete")
    async def delete(request: Request) -> Any:
        body = await request.json()
        namespace = body.get("namespace", "")
        if namespace not in state.namespaces:
            return _error(404, "NOT_FOUND", "Namespace not found")
        ids = body.get("ids") or []
        if len(ids) > DELETE_MAX:
            return _error(
                400,
                "INVALID_ARGUMENT",
                f"Delete of {len(ids)} ids exceeds the limit of {DELETE_MAX}",
            )
        with state.lock:
            rows = state.namespaces[namespace]
            if body.get("deleteAll"):
                rows.clear()
            for i in ids:
                rows.pop(i, None)
            if body.get("filter"):
                for i in [i for i, r in rows.items() if matches_filter(r.metadata, body["filter"])]:
                    del rows[i]
        return {}

    @app.post("/describe_index_stats")
    async def describe_index_stats(request: Request) -> Any:
        with state.lock:
            counts = state.counts()
            if state.stale_reads > 0:
                state.stale_reads -= 1
                counts = dict(state.stale_counts)
        return {
            "namespaces": {ns: {"vectorCount": n} for ns, n in counts.items()},
            "dimension": state.dimension or 0,
            "indexFullness": 0.0,
            "totalVectorCount": sum(counts.values()),
            "metric": "cosine",
            "vectorType": "dense",
        }

    @app.get("/vectors/list")
    async def list_ids(
        namespace: str = "",
        prefix: str = "",
        limit: int = LIST_LIMIT,
        token: str | None = Query(None, alias="paginationToken"),
    ) -> Any:
        ids = [i for i in state.namespaces.get(namespace, {}) if i.startswith(prefix)]
        page, token = _page(ids, token, min(limit, state.page_size))
        out: dict[str, Any] = {
            "vectors": [{"id": i} for i in page],
            "namespace": namespace,
            "usage": {"readUnits": 1},
        }
        if token:
            out["pagination"] = {"next": token}
        return out

    @app.get("/namespaces")
    async def list_namespaces(
        prefix: str = "",
        limit: int = LIST_LIMIT,
        token: str | None = Query(None, alias="paginationToken"),
    ) -> Any:
        names = [n for n in state.namespaces if n.startswith(prefix)]
        page, token = _page(names, token, min(limit, state.page_size))
        out: dict[str, Any] = {
            # Pinecone sends record_count as a string-encoded integer.
            "namespaces": [
                {"name": n, "record_count": str(len(state.namespaces[n]))} for n in page
            ],
            "total_count": len(names),
        }
        if token:
            out["pagination"] = {"next": token}
        return out

    @app.get("/namespaces/{namespace}")
    async def describe_namespace(namespace: str) -> Any:
        if namespace not in state.namespaces:
            return _error(404, "NOT_FOUND", "Namespace not found")
        return {"name": namespace, "record_count": str(len(state.namespaces[namespace]))}

    @app.delete("/namespaces/{namespace}")
    async def delete_namespace(namespace: str) -> Any:
        with state.lock:
            if state.namespaces.pop(namespace, None) is None:
                return _error(404, "NOT_FOUND", "Namespace not found")
        return JSONResponse({}, status_code=202)

    return app


class PineconeStandIn:
    """The stand-in served by uvicorn on a free 127.0.0.1 port in a background thread."""

    def __init__(self, api_key: str = "test-key", dimension: int | None = None) -> None:
        self.state = State(api_key=api_key, dimension=dimension)
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.host = ""

    def start(self) -> str:
        """Start serving and return the host, ``http://127.0.0.1:PORT``."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.host = f"http://127.0.0.1:{sock.getsockname()[1]}"
        self.state.host = self.host
        config = uvicorn.Config(
            create_app(self.state), log_level="warning", access_log=False, lifespan="off"
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run,
            kwargs={"sockets": [sock]},
            daemon=True,
            name="pinecone-standin",
        )
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("The Pinecone stand-in did not start.")
            time.sleep(0.01)
        return self.host

    def stop(self) -> None:
        """Stop serving and wait for the thread."""
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=10)
        self._server = self._thread = None


@contextmanager
def pinecone_standin(
    api_key: str = "test-key",
    dimension: int | None = None,
) -> Iterator[PineconeStandIn]:
    """A running stand-in for the duration of the ``with`` block."""
    standin = PineconeStandIn(api_key=api_key, dimension=dimension)
    standin.start()
    try:
        yield standin
    finally:
        standin.stop()
