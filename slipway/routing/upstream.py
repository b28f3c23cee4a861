"""OpenAI-compatible upstreams over HTTP: one shared ``httpx.AsyncClient`` per worker (a
bounded connection pool), each call within its model's timeout; failures classified as worth
a fallback (429, 5xx, timeouts, connection errors, the server's own credentials refused) or
the client's own (any other 4xx: passed through as the upstream said it)."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx

from slipway.api.errors import ApiError
from slipway.routing.models import ModelSpec

logger = logging.getLogger(__name__)
# Up to this many bytes a body is parsed on the event loop; a larger one in a worker thread.
INLINE_JSON_BYTES = 65_536
# The upstream refused our credentials or does not know the configured model: the server's
# configuration, not the client's request, so another model may answer.
MISCONFIGURED = frozenset({401, 403, 404})


class UpstreamError(Exception):
    """An upstream call that failed: its status, OpenAI error fields, and whether another
    model of the chain should be tried."""

    def __init__(
        self,
        status: int,
        message: str,
        retryable: bool,
        error: dict[str, Any] | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(f"{status} {message}")
        self.status = status
        self.message = message
        self.retryable = retryable
        self.error = error or {}
        self.retry_after = retry_after

    def api_error(self, model: str) -> ApiError:
        """What the client gets when this is the last answer of the chain."""
        if not self.retryable:  # the client's own mistake: as the upstream said it
            return ApiError(
                self.status,
                str(self.error.get("message") or self.message),
                type=str(self.error.get("type") or "invalid_request_error"),
                param=self.error.get("param"),
                code=self.error.get("code"),
            )
        if self.status == 429:
            return ApiError(
                429,
                f"Model {model!r} is rate limited upstream; retry shortly.",
                type="rate_limit_error",
                code="upstream_rate_limited",
                retry_after=self.retry_after or 1,
            )
        status = 504 if self.status == 504 else 502 if self.status in MISCONFIGURED else 503
        return ApiError(
            status,
            f"Model {model!r} is unavailable: {self.message}",
            type="server_error",
            code="upstream_unavailable",
            retry_after=self.retry_after or 1,
        )


def failure(response: httpx.Response, body: bytes) -> UpstreamError:
    """The error of an upstream's non-2xx ``response``."""
    status = response.status_code
    try:
        parsed = json.loads(body)
        error = parsed.get("error") if isinstance(parsed, dict) else None
    except ValueError:
        error = None
    error = error if isinstance(error, dict) else {}
    message = str(error.get("message") or body[:200].decode(errors="replace") or status)
    retryable = status in (408, 409, 429) or status >= 500 or status in MISCONFIGURED
    try:
        retry_after = float(response.headers.get("retry-after", ""))
    except ValueError:
        retry_after = None
    return UpstreamError(status, message, retryable, error, retry_after)


def unreachable(exc: httpx.HTTPError, spec: ModelSpec) -> UpstreamError:
    """The error of a call that got no answer: a timeout (504) or no connection (503)."""
    if isinstance(exc, httpx.TimeoutException):
        return UpstreamError(504, f"no answer within {spec.timeout_s:g} s", True)
    return UpstreamError(503, f"{type(exc).__name__}: {exc}", True)


async def loads(body: bytes) -> Any:
    """JSON of an upstream body; a large one parsed off the event loop."""
    if len(body) <= INLINE_JSON_BYTES:
        return json.loads(body)
    return await asyncio.to_thread(json.loads, body)


async def dumps(value: Any) -> bytes:
    """JSON bytes of a reply; a large one written off the event loop."""

    def write() -> bytes:
        return json.dumps(value, separators=(",", ":")).encode()

    if isinstance(value, dict) and len(value.get("data") or ()) > 8:  # embeddings
        return await asyncio.to_thread(write)
    return write()


@dataclass
class UpstreamStream:
    """An upstream's server-sent events, opened: the lines up to its first event are read (so
    a failure before it can still fall back); the rest are read as they come."""

    response: httpx.Response
    lines: AsyncIterator[str]
    head: list[str] = field(default_factory=list)

    async def lines_after_head(self) -> AsyncIterator[str]:
        """Every line: the head, then the rest."""
        for line in self.head:
            yield line
        async for line in self.lines:
            yield line

    async def close(self) -> None:
        """Release the connection."""
        await self.response.aclose()


class Upstream(Protocol):
    """OpenAI-compatible models elsewhere."""

    async def post(self, spec: ModelSpec, path: str, body: dict[str, Any]) -> Any: ...

    async def open_stream(
        self, spec: ModelSpec, path: str, body: dict[str, Any]
    ) -> UpstreamStream: ...

    async def aclose(self) -> None: ...


class HttpUpstream:
    """Upstreams over HTTP with one shared client (created in the worker's event loop)."""

    def __init__(self, keys: dict[str, str], max_connections: int = 64) -> None:
        self.keys = keys
        self.max_connections = max_connections
        self._client: httpx.AsyncClient | None = None

    @property
    def client(self) -> httpx.AsyncClient:
        """The worker's client (one connection pool for every upstream)."""
        if self._client is None:
            self._client = httpx.AsyncClient(
                limits=httpx.Limits(
                    max_connections=self.max_connections,
                    max_keepalive_connections=self.max_connections,
                ),
                follow_redirects=False,
            )
        return self._client

    def _request(self, spec: ModelSpec, path: str, body: dict[str, Any]) -> httpx.Request:
        headers = {"Content-Type": "application/json"}
        key = self.keys.get(spec.id)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return self.client.build_request(
            "POST",
            f"{(spec.base_url or '').rstrip('/')}{path}",
            content=json.dumps(body, separators=(",", ":")).encode(),
            headers=headers,
            timeout=spec.timeout_s,
        )

    async def post(self, spec: ModelSpec, path: str, body: dict[str, Any]) -> Any:
        """The upstream's JSON reply; :class:`UpstreamError` otherwise."""
        try:
            async with asyncio.timeout(spec.timeout_s):
                response = await self.client.send(self._request(spec, path, body))
        except TimeoutError:
            raise UpstreamError(504, f"no answer within {spec.timeout_s:g} s", True) from None
        except httpx.HTTPError as exc:
            raise unreachable(exc, spec) from exc
        if response.status_code >= 400:
            raise failure(response, response.content)
        try:
            return await loads(response.content)
        except ValueError as exc:
            raise UpstreamError(502, "the reply is not JSON", True) from exc

    async def open_stream(self, spec: ModelSpec, path: str, body: dict[str, Any]) -> UpstreamStream:
        """The upstream's stream, its status checked and its first event read (each read
        within the model's timeout); :class:`UpstreamError` otherwise."""
        response: httpx.Response | None = None
        try:
            async with asyncio.timeout(spec.timeout_s):
                response = await self.client.send(self._request(spec, path, body), stream=True)
                if response.status_code >= 400:
                    raw = await response.aread()
                    raise failure(response, raw)
                if not response.headers.get("content-type", "").startswith("text/event-stream"):
                    raise UpstreamError(502, "the reply is not a stream of events", True)
                opened = UpstreamStream(response, aiter(response.aiter_lines()))
                async for line in opened.lines:
                    opened.head.append(line)
                    if line.startswith("data:"):
                        return opened
                raise UpstreamError(502, "the stream ended before its first event", True)
        except UpstreamError:
            if response is not None:
                await response.aclose()
            raise
        except TimeoutError:
            if response is not None:
                await response.aclose()
            raise UpstreamError(504, f"no answer within {spec.timeout_s:g} s", True) from None
        except httpx.HTTPError as exc:
            if response is not None:
                await response.aclose()
            raise unreachable(exc, spec) from exc

    async def aclose(self) -> None:
        """Close the connection pool."""
        if self._client is not None:
            await self._client.aclose()
            self._client = None
