"""One pure-ASGI middleware in front of every API route (streaming-safe: it never buffers a
response). Cheap checks first: path and header sizes, then the gate (credentials and the request
rate limit), then the body's type and size, then the body itself within a deadline; only then
is a concurrency slot taken (or the request shed with a 503), and the response must start
within its deadline (504 otherwise). Also: request ids, version, deprecation and rate-limit
headers, metrics by route template, JSON access logs, and a JSON 500 that reveals nothing when
a handler fails."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, date, datetime
from datetime import time as dtime
from email.utils import format_datetime
from typing import Any

from pydantic import BaseModel
from starlette.exceptions import HTTPException

from slipway import __version__
from slipway.api import metrics
from slipway.api.errors import ApiError, from_exception, overloaded
from slipway.api.schemas import ACTIVE_LIMITS, Limits

API_VERSION = "v1"
REQUEST_ID: ContextVar[str] = ContextVar("request_id", default="-")
_VALID_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_BODY_METHODS = {"POST", "PUT", "PATCH"}
MAX_PATH_CHARS = 2048
MAX_CREDENTIAL_CHARS = 4096
logger = logging.getLogger("slipway.access")
errors_logger = logging.getLogger("slipway.api")


class Deprecated(BaseModel):
    """A route on its way out: when it was deprecated, when it goes, what replaces it."""

    since: date
    sunset: date
    successor: str | None = None

    def headers(self) -> list[tuple[bytes, bytes]]:
        """``Deprecation`` (RFC 9745), ``Sunset`` (RFC 8594) and a successor ``Link``."""
        since = int(datetime.combine(self.since, dtime(), UTC).timestamp())
        sunset = format_datetime(datetime.combine(self.sunset, dtime(), UTC), usegmt=True)
        out = [(b"deprecation", f"@{since}".encode()), (b"sunset", sunset.encode())]
        if self.successor:
            out.append((b"link", f'<{self.successor}>; rel="successor-version"'.encode()))
        return out


class BodyTooLarge(HTTPException):
    """Raised while the body streams in, past the limit (FastAPI passes HTTPException on)."""

    def __init__(self, limit: int) -> None:
        super().__init__(
            413,
            f"The body exceeds {limit} bytes (SLIPWAY_MAX_BODY_BYTES); send "
            "fewer or shorter texts.",
        )


# A check that runs before a body is read or a slot taken (authentication and the request rate
# limit): None to go on, else the error to answer with. It may store what it learnt in
# ``scope["state"]`` (the caller) for the handlers.
Gate = Callable[[dict[str, Any], dict[str, str]], Awaitable["ApiError | None"]]


@dataclass
class Load:
    """Requests a worker holds a slot for, against its limit: what overload shedding and the
    readiness probe read."""

    max_concurrency: int
    in_flight: int = 0

    @property
    def saturated(self) -> bool:
        """Whether every slot is taken."""
        return self.in_flight >= self.max_concurrency


@dataclass(frozen=True)
class Deadlines:
    """How long a request may take: to send its body, to get its response started (whole
    responses), and to finish a stream once it started."""

    body_seconds: float = 10.0
    response_seconds: float = 60.0
    stream_seconds: float = 600.0


class ApiMiddleware:
    """See the module docstring. ``deprecated`` maps route templates to their deprecation;
    ``gate`` guards the paths under ``protected``; ``load`` counts the slots taken."""

    def __init__(
        self,
        app: Any,
        max_body_bytes: int,
        max_concurrency: int,
        deprecated: dict[str, Deprecated] | None = None,
        gate: Gate | None = None,
        protected: str = "/v1/",
        deadlines: Deadlines | None = None,
        load: Load | None = None,
        limits: Limits | None = None,
    ) -> None:
        self.app = app
        self.limits = limits or Limits.defaults()
        self.max_body = max_body_bytes
        self.deprecated = deprecated or {}
        self.gate = gate
        self.protected = protected
        self.deadlines = deadlines or Deadlines()
        if load is not None and load.max_concurrency != max_concurrency:
            raise ValueError(f"load counts {load.max_concurrency} slots, not {max_concurrency}.")
        self.load = load or Load(max_concurrency)

    @property
    def in_flight(self) -> int:
        """Requests holding a slot now."""
        return self.load.in_flight

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {
            k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])
        }
        given = headers.get("x-request-id", "")
        request_id = given if _VALID_ID.match(given) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        token = REQUEST_ID.set(request_id)
        limits = ACTIVE_LIMITS.set(self.limits)
        start = time.perf_counter()
        method = scope.get("method", "GET")
        sent: dict[str, Any] = {"started": False, "status": 500, "finished": False, "stream": False}
        deadline: asyncio.Timeout | None = None

        async def send_wrapper(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.body" and not message.get("more_body"):
                sent["finished"] = True
            if message["type"] == "http.response.start":
                sent["started"], sent["status"] = True, message["status"]
                sent["stream"] = any(
                    k.lower() == b"content-type" and v.startswith(b"text/event-stream")
                    for k, v in message.get("headers", [])
                )
                message["headers"] = [
                    *message.get("headers", []),
                    *self._headers(scope, request_id),
                ]
                if deadline is not None:  # a stream gets its own, longer deadline
                    deadline.reschedule(
                        asyncio.get_running_loop().time() + self.deadlines.stream_seconds
                    )
            await send(message)

        try:
            refusal = await self._refusal(scope, method, headers)
            if refusal is not None:
                await _send_error(send_wrapper, refusal)
                return
            body = await self._read_body(receive, method)
            if self.load.saturated:
                metrics.overloaded()
                await _send_error(send_wrapper, overloaded())
                return
            self.load.in_flight += 1
            try:
                async with asyncio.timeout(self.deadlines.response_seconds) as deadline:
                    await self.app(scope, _replay(body, receive), send_wrapper)
            finally:
                deadline = None
                self.load.in_flight -= 1
        except BodyTooLarge:
            if not sent["started"]:
                await _send_error(send_wrapper, self._too_large())
        except _BodyTimeout:
            await _send_error(
                send_wrapper,
                ApiError(
                    408,
                    f"The body did not arrive within {self.deadlines.body_seconds:g} s; send "
                    "it at once.",
                    code="body_timeout",
                ),
            )
        except _Disconnected:
            sent["status"] = 499  # the client went away before its body was complete
        except TimeoutError:
            metrics.timed_out("request")
            late = ApiError(
                504,
                "The request took longer than its deadline "
                f"({self.deadlines.response_seconds:g} s); retry shortly.",
                type="server_error",
                code="timeout",
            )
            await _end(send_wrapper, sent, late)
        except ApiError as exc:  # raised by a stream after its response started
            await _end(send_wrapper, sent, exc)
        except Exception:
            errors_logger.exception("Unhandled error in %s %s", method, scope.get("path"))
            await _end(send_wrapper, sent, from_exception(RuntimeError()))
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            seconds = time.perf_counter() - start
            metrics.request_done(route, method, sent["status"], seconds)
            logger.info(
                "request",
                extra={
                    "request_id": request_id,
                    "method": method,
                    "path": scope.get("path", "")[:256],
                    "route": route,
                    "status": sent["status"],
                    "duration_ms": round(seconds * 1e3, 2),
                    "principal": scope["state"].get("principal", "-"),
                },
            )
            REQUEST_ID.reset(token)
            ACTIVE_LIMITS.reset(limits)

    async def _refusal(
        self, scope: dict[str, Any], method: str, headers: dict[str, str]
    ) -> ApiError | None:
        """The cheap checks, in order: path and header sizes, the gate (credentials, request
        rate), then the body's declared type and size."""
        path = scope.get("path", "")
        if len(path) > MAX_PATH_CHARS:
            return ApiError(
                414,
                f"The path is longer than {MAX_PATH_CHARS} characters.",
                param="path",
                code="uri_too_long",
            )
        for name in ("authorization", "x-api-key"):
            if len(headers.get(name, "")) > MAX_CREDENTIAL_CHARS:
                return ApiError(
                    431,
                    f"The {name} header is longer than {MAX_CREDENTIAL_CHARS} characters.",
                    param=name,
                    code="header_too_large",
                )
        if self.gate is not None and path.startswith(self.protected):
            refused = await self.gate(scope, headers)
            if refused is not None:
                return refused
        if method not in _BODY_METHODS:
            return None
        ctype = headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype != "application/json":
            return ApiError(
                415,
                f"Send the body as JSON with 'Content-Type: application/json' "
                f"(got {ctype or 'none'!r}).",
                param="content-type",
                code="unsupported_media_type",
            )
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > self.max_body:
            return self._too_large()
        return None

    def _too_large(self) -> ApiError:
        return ApiError(
            413,
            f"The body exceeds {self.max_body} bytes (SLIPWAY_MAX_BODY_BYTES); "
            "send fewer or shorter texts.",
            code="body_too_large",
        )

    async def _read_body(self, receive: Any, method: str) -> bytes:
        """The whole body, read before a slot is taken, within the body deadline and size."""
        if method not in _BODY_METHODS:
            return b""
        chunks: list[bytes] = []
        seen = 0
        try:
            async with asyncio.timeout(self.deadlines.body_seconds):
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        raise _Disconnected
                    chunk = message.get("body", b"")
                    seen += len(chunk)
                    if seen > self.max_body:
                        raise BodyTooLarge(self.max_body)
                    chunks.append(chunk)
                    if not message.get("more_body", False):
                        return b"".join(chunks)
        except TimeoutError as exc:
            raise _BodyTimeout from exc

    def _headers(self, scope: dict[str, Any], request_id: str) -> list[tuple[bytes, bytes]]:
        out = [
            (b"x-request-id", request_id.encode()),
            (b"x-api-version", API_VERSION.encode()),
            (b"x-slipway-version", __version__.encode()),
        ]
        state = scope.get("state", {})
        out += [
            (k.lower().encode(), v.encode()) for k, v in state.get("ratelimit_headers", {}).items()
        ]
        route = getattr(scope.get("route"), "path", None)
        if route in self.deprecated:
            out += self.deprecated[route].headers()
        return out


class _BodyTimeout(Exception):
    """The client did not finish sending its body in time."""


class _Disconnected(Exception):
    """The client went away while sending its body."""


def _replay(body: bytes, receive: Any) -> Any:
    """A ``receive`` that hands the app the body already read, then waits on the client (so
    a disconnect still reaches a streaming response)."""
    delivered = False

    async def replayed() -> dict[str, Any]:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        return dict(await receive())

    return replayed


async def _end(send: Any, sent: dict[str, Any], error: ApiError) -> None:
    """Answer with ``error``; or, when the response already started (a stream that failed or
    ran out of time), end it properly: a last server-sent event carrying the error (OpenAI's
    clients raise it), then the end of the body."""
    if not sent["started"]:
        await _send_error(send, error)
        return
    if sent["finished"]:
        return
    body = b""
    if sent["stream"]:
        body = f"data: {json.dumps(error.body())}\n\n".encode()
    with contextlib.suppress(OSError, RuntimeError):  # the client may be gone already
        await send({"type": "http.response.body", "body": body, "more_body": False})


async def _send_error(send: Any, error: ApiError) -> None:
    body = json.dumps(error.body()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in error.headers().items()]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class PathGuard:
    """Outermost ASGI middleware: a path with a control character (a decoded ``%0A``,
    ``%00``...) is a JSON 400 before any routing (the server's outer router cannot route it
    and would answer with a plain-text 404)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in path):
            error = ApiError(
                400, "The path holds a control character; encode it out.", code="invalid_path"
            )
            await _send_error(send, error)
            return
        await self.app(scope, receive, send)


class StartDeadline:
    """The server's backstop deadline, outside everything else: a request whose response has
    not started ``timeout`` seconds after it arrived is cancelled and answered with a JSON 504
    (a response that started, such as a stream, runs on).

    It replaces BentoML's ``TimeoutMiddleware`` (same constructor, same rule), which arms a
    ``loop.call_later(timeout)`` per request and never cancels it: each request's future and
    context (its tracing span, its scope) then stay on the event loop's timer heap for the
    whole timeout after the request ended. At 50 requests/s and BentoML's 300 s that is
    15,000 requests' objects held at any time: the worker's memory grows for five minutes,
    and every full garbage collection walks them all while the worker stands still. Here the
    timer is cancelled when the request ends, and an application that ends without
    answering ends the wait at once."""

    def __init__(self, app: Any, timeout: float) -> None:
        self.app, self.timeout = app, timeout

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        started: asyncio.Future[None] = loop.create_future()

        async def send_started(message: dict[str, Any]) -> None:
            if not started.done():
                started.set_result(None)
            await send(message)

        def finish(error: BaseException | None) -> None:
            if started.done():
                return
            if error is None:
                started.set_result(None)
            else:
                started.set_exception(error)

        task = asyncio.ensure_future(self.app(scope, receive, send_started))
        task.add_done_callback(lambda _: finish(None))  # it ended without answering
        timer = loop.call_later(self.timeout, finish, TimeoutError())
        try:
            try:
                await started
            finally:
                timer.cancel()
            await task
        except TimeoutError:
            if not task.done() and task.cancel():
                metrics.timed_out("request")
                await _send_error(
                    send,
                    ApiError(
                        504,
                        f"The response did not start within the server's {self.timeout:g} s.",
                        type="server_error",
                        code="timeout",
                    ),
                )
                return
            raise
        except asyncio.CancelledError:  # the server gave up on this request: so does the app
            task.cancel()
            raise


class RequestIdFilter(logging.Filter):
    """Adds the current request id to every log record."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = REQUEST_ID.get()
        return True


def configure_json_logging(level: int = logging.INFO) -> None:
    """Slipway's loggers write one JSON object per line to stderr, with the request id."""
    from pythonjsonlogger.json import JsonFormatter

    root = logging.getLogger("slipway")
    if any(getattr(h, "_slipway_json", False) for h in root.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter(
            "%(asctime)s %(levelname)s %(name)s %(message)s",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
        )
    )
    handler.addFilter(RequestIdFilter())
    handler._slipway_json = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)
    root.propagate = False
