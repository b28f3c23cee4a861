"""One pure-ASGI middleware in front of every API route (streaming-safe: it never buffers a
response): request ids, overload shedding, body-size and content-type checks, version,
deprecation and rate-limit headers, metrics, JSON access logs, and a JSON 500 that reveals
nothing when a handler fails."""

from __future__ import annotations

import json
import logging
import re
import sys
import time
import uuid
from contextvars import ContextVar
from datetime import UTC, date, datetime
from datetime import time as dtime
from email.utils import format_datetime
from typing import Any

from pydantic import BaseModel
from starlette.exceptions import HTTPException

from slipway import __version__
from slipway.api import metrics
from slipway.api.errors import ApiError, from_exception, overloaded

API_VERSION = "v1"
REQUEST_ID: ContextVar[str] = ContextVar("request_id", default="-")
_VALID_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_BODY_METHODS = {"POST", "PUT", "PATCH"}
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
        super().__init__(413, f"The body exceeds {limit} bytes (SLIPWAY_MAX_BODY_BYTES); send "
                         "fewer or shorter texts.")


class ApiMiddleware:
    """See the module docstring. ``deprecated`` maps route templates to their deprecation."""

    def __init__(self, app: Any, max_body_bytes: int, max_concurrency: int,
                 deprecated: dict[str, Deprecated] | None = None) -> None:
        self.app = app
        self.max_body = max_body_bytes
        self.max_concurrency = max_concurrency
        self.deprecated = deprecated or {}
        self.in_flight = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope.get("headers", [])}
        given = headers.get("x-request-id", "")
        request_id = given if _VALID_ID.match(given) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        token = REQUEST_ID.set(request_id)
        start = time.perf_counter()
        method = scope.get("method", "GET")
        sent = {"started": False, "status": 500}

        async def send_wrapper(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                sent["started"], sent["status"] = True, message["status"]
                message["headers"] = [*message.get("headers", []),
                                      *self._headers(scope, request_id)]
            await send(message)

        try:
            refusal = self._refusal(method, headers)
            if refusal is not None:
                await _send_error(send_wrapper, refusal)
                return
            self.in_flight += 1
            try:
                await self.app(scope, self._limited(receive), send_wrapper)
            finally:
                self.in_flight -= 1
        except BodyTooLarge:
            if not sent["started"]:
                await _send_error(send_wrapper, self._too_large())
        except Exception:
            errors_logger.exception("Unhandled error in %s %s", method, scope.get("path"))
            if not sent["started"]:
                await _send_error(send_wrapper, from_exception(RuntimeError()))
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            seconds = time.perf_counter() - start
            metrics.request_done(route, method, sent["status"], seconds)
            logger.info("request", extra={
                "request_id": request_id, "method": method, "path": scope.get("path"),
                "route": route, "status": sent["status"], "duration_ms": round(seconds * 1e3, 2),
                "principal": scope["state"].get("principal", "-")})
            REQUEST_ID.reset(token)

    def _refusal(self, method: str, headers: dict[str, str]) -> ApiError | None:
        if self.in_flight >= self.max_concurrency:
            metrics.overloaded()
            return overloaded()
        if method not in _BODY_METHODS:
            return None
        ctype = headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype != "application/json":
            return ApiError(415, f"Send the body as JSON with 'Content-Type: application/json' "
                            f"(got {ctype or 'none'!r}).", param="content-type",
                            code="unsupported_media_type")
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > self.max_body:
            return self._too_large()
        return None

    def _too_large(self) -> ApiError:
        return ApiError(413, f"The body exceeds {self.max_body} bytes (SLIPWAY_MAX_BODY_BYTES); "
                        "send fewer or shorter texts.", code="body_too_large")

    def _limited(self, receive: Any) -> Any:
        seen = 0

        async def wrapped() -> dict[str, Any]:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:
                    raise BodyTooLarge(self.max_body)
            return message

        return wrapped

    def _headers(self, scope: dict[str, Any], request_id: str) -> list[tuple[bytes, bytes]]:
        out = [(b"x-request-id", request_id.encode()), (b"x-api-version", API_VERSION.encode()),
               (b"x-slipway-version", __version__.encode())]
        state = scope.get("state", {})
        out += [(k.lower().encode(), v.encode())
                for k, v in state.get("ratelimit_headers", {}).items()]
        route = getattr(scope.get("route"), "path", None)
        if route in self.deprecated:
            out += self.deprecated[route].headers()
        return out


async def _send_error(send: Any, error: ApiError) -> None:
    body = json.dumps(error.body()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if error.status == 503:
        headers.append((b"retry-after", b"1"))
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


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
    handler.setFormatter(JsonFormatter("%(asctime)s %(levelname)s %(name)s %(message)s",
                                       rename_fields={"asctime": "time", "levelname": "level",
                                                      "name": "logger"}))
    handler.addFilter(RequestIdFilter())
    handler._slipway_json = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)
    root.propagate = False
