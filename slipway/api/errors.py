"""API errors in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}`` with the
right status code, so OpenAI SDKs raise their usual exceptions and no client mistake is a 500."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from slipway.api.keys import AuthError, ScopeError


@dataclass(eq=False)  # not frozen: frameworks set __traceback__ on exceptions they re-raise
class ApiError(Exception):
    """An error a client gets back: status, message, and what it is about."""

    status: int
    message: str
    type: str = "invalid_request_error"
    param: str | None = None
    code: str | None = None
    retry_after: float | None = None  # seconds; default for 503/504: RETRY_AFTER_SECONDS

    def __str__(self) -> str:
        return f"{self.status} {self.message}"

    def headers(self) -> dict[str, str]:
        """``Retry-After`` for the statuses a client should retry (503, 504, and any error
        that names when to retry)."""
        if self.retry_after is not None:
            return {"Retry-After": str(max(1, math.ceil(self.retry_after)))}
        return {"Retry-After": str(RETRY_AFTER_SECONDS)} if self.status in (503, 504) else {}

    def body(self) -> dict[str, Any]:
        """The JSON body."""
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


RETRY_AFTER_SECONDS = 1
_UNION_TAG = re.compile(
    r"^(constrained-\w+|str|int|float|bool|none|list\[.*\]|dict\[.*\]|"
    r"tuple\[.*\]|function-\w+\[.*\]|literal\[.*\])$"
)


def field_path(location: Sequence[str | int]) -> str | None:
    """``("body", "messages", 0, "content")`` -> ``messages.0.content`` (None for the body);
    pydantic's union-branch tags (``list[constrained-str]``) are left out."""
    parts = [
        str(p)
        for p in location
        if p not in ("body", "query", "path", "header")
        and not (isinstance(p, str) and _UNION_TAG.match(p))
    ]
    return ".".join(parts) or None


def from_validation(errors: Sequence[Mapping[str, Any]]) -> ApiError:
    """A 400 naming the first invalid field, from pydantic's or FastAPI's error list."""
    if not errors:
        return ApiError(400, "Invalid request.")
    # of a union's failed branches, the deepest error says most (the item that failed)
    first = max(errors, key=lambda e: len(e.get("loc", ())))
    param = field_path(first.get("loc", ()))
    message = str(first.get("msg", "Invalid value"))
    if first.get("type") == "json_invalid":
        return ApiError(400, "The body is not valid JSON (or not UTF-8).", code="json_invalid")
    where = f"{param}: " if param else ""
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return ApiError(400, f"{where}{message}{more}", param=param, code=str(first.get("type")))


def from_exception(exc: BaseException) -> ApiError:
    """The client-facing error for an exception: auth 401, scope 403, our ApiError as is,
    anything else a 500 that reveals nothing internal."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, AuthError):
        return ApiError(401, str(exc), type="authentication_error", code="invalid_api_key")
    if isinstance(exc, ScopeError):
        return ApiError(403, str(exc), type="permission_error", code="insufficient_scope")
    return ApiError(
        500,
        "Internal error; see the server log for the request id.",
        type="server_error",
        code="internal_error",
    )


def rate_limited(retry_after: float) -> ApiError:
    """429 for a key over its budget (the caller adds Retry-After and RateLimit-* headers)."""
    return ApiError(
        429,
        f"Rate limit reached; retry in {max(1, round(retry_after))} s.",
        type="rate_limit_error",
        code="rate_limit_exceeded",
    )


def starting() -> ApiError:
    """503 while the service has not finished loading its models and index."""
    return ApiError(503, "The service is starting.", type="server_error", code="starting")


def overloaded() -> ApiError:
    """503 when the server itself is saturated (not the client's budget)."""
    return ApiError(
        503, "The server is overloaded; retry shortly.", type="server_error", code="overloaded"
    )


def timed_out(what: str, seconds: float) -> ApiError:
    """504 when a backend call (encoder, generator, search, graph) outlived its deadline."""
    return ApiError(
        504,
        f"The {what} did not answer within {seconds:g} s; retry shortly.",
        type="server_error",
        code="timeout",
    )
