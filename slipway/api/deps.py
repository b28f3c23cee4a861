"""What the routes share: the worker's resources, the gate (credentials and the request rate,
checked before a body is read or a slot taken), scope checks, the token budget, context checks,
server-sent events, and the error responses the OpenAPI spec lists."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request, Security
from fastapi.concurrency import run_in_threadpool
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from slipway.api import metrics
from slipway.api.auth import Principal
from slipway.api.errors import ApiError, from_exception, rate_limited, starting
from slipway.api.keys import AuthError, Scope, ScopeError
from slipway.api.middleware import Gate
from slipway.api.ratelimit import Limits
from slipway.api.schemas import ErrorBody
from slipway.rag.inference import Charge
from slipway.rag.prompts import TEMPLATE_RESERVE
from slipway.resources import Resources

# Credential and rate-limit look-ups in Redis, off the event loop, never behind long work.
_GATE_THREADS = ThreadPoolExecutor(max_workers=4, thread_name_prefix="slipway-gate")
_bearer = HTTPBearer(auto_error=False, description="An API key (sk-slipway-...) or a JWT.")
_api_key = APIKeyHeader(name="X-API-Key", auto_error=False, description="An API key.")
ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": text}
    for status, text in {
        400: "Invalid request (the field is named)",
        401: "Missing or invalid credentials",
        403: "The credential lacks the route's scope",
        404: "Not found",
        408: "The body did not arrive in time",
        413: "Body too large",
        415: "Body is not JSON",
        429: "Rate limit reached (see Retry-After)",
        503: "Overloaded, or a backend (index, graph) unavailable (see Retry-After)",
        504: "A deadline passed (see Retry-After)",
    }.items()
}
_EVENT = {
    "type": "object",
    "required": ["data"],
    "properties": {
        "data": {"type": "string", "description": "a JSON object, or [DONE] last"},
        "event": {"type": "string"},
        "id": {"type": "string"},
    },
}
STREAMED: dict[int | str, dict[str, Any]] = {
    **ERRORS,
    200: {
        "content": {"text/event-stream": {"schema": _EVENT}},
        "description": "JSON, or server-sent events when `stream` is true",
    },
}


# The dependencies are coroutines: FastAPI runs a plain ``def`` dependency in a worker thread,
# a hop per dependency per request for what is a dictionary look-up.
async def resources(request: Request) -> Resources:
    """The worker's resources (set when the service starts)."""
    res: Resources | None = getattr(request.app.state, "resources", None)
    if res is None:
        raise starting()
    return res


Res = Annotated[Resources, Depends(resources)]


def guard(*scopes: Scope) -> Callable[..., Awaitable[Principal]]:
    """A dependency: the caller the gate authenticated (see :func:`gate`) must hold every scope
    in ``scopes``. The credential parameters only document the security schemes."""

    async def dependency(
        request: Request,
        bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
        api_key: Annotated[str | None, Security(_api_key)],
    ) -> Principal:
        principal: Principal | None = getattr(request.state, "caller", None)
        if principal is None:  # the gate guards every /v1 path; nothing else gets here
            raise AuthError("No credentials were checked for this route.")
        for scope in scopes:
            principal.require(scope)
        return principal

    return dependency


def credential(headers: dict[str, str]) -> str | None:
    """The API key or JWT of a request: ``Authorization: Bearer ...`` or ``X-API-Key``."""
    scheme, _, value = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return headers.get("x-api-key") or None


def gate(app: FastAPI) -> Gate:
    """The cheap checks before a body is read or a slot taken: authenticate the caller, then
    charge its request bucket (the caller and rate-limit headers go into the scope's state)."""

    def check(res: Resources, state: dict[str, Any], headers: dict[str, str]) -> ApiError | None:
        try:
            principal = res.auth.authenticate(credential(headers))
            if not principal.scopes:
                raise ScopeError("This credential has no scope.")
        except (AuthError, ScopeError) as exc:
            return from_exception(exc)
        state["principal"], state["caller"] = principal.id, principal
        decision = res.limiter.acquire(principal.id, Limits(principal.limits.requests_per_minute))
        state["ratelimit_headers"] = decision.headers()
        if not decision.allowed:
            metrics.rate_limited("requests")
            return rate_limited(decision.retry_after)
        return None

    async def run(scope: dict[str, Any], headers: dict[str, str]) -> ApiError | None:
        res: Resources | None = getattr(app.state, "resources", None)
        if res is None:
            return starting()
        if res.remote_credentials:  # Redis round trips: off the loop
            return await asyncio.get_running_loop().run_in_executor(
                _GATE_THREADS, check, res, scope["state"], headers
            )
        return check(res, scope["state"], headers)

    return run


def charger(request: Request, res: Resources, principal: Principal) -> Charge:
    """Charges tokens to the caller's token bucket; a 429 when it cannot pay."""

    async def charge(tokens: int) -> None:
        if not principal.limits.tokens_per_minute or tokens <= 0:
            return
        decision = await run_in_threadpool(
            res.limiter.acquire,
            principal.id,
            Limits(None, principal.limits.tokens_per_minute),
            tokens,
        )
        if not decision.allowed:
            metrics.rate_limited("tokens")
            headers = dict(getattr(request.state, "ratelimit_headers", {}))
            headers["Retry-After"] = decision.headers()["Retry-After"]
            request.state.ratelimit_headers = headers
            raise ApiError(
                429,
                f"Token rate limit reached ({tokens} tokens asked, "
                f"{principal.limits.tokens_per_minute}/min allowed); retry in "
                f"{headers['Retry-After']} s.",
                type="rate_limit_error",
                code="rate_limit_exceeded",
            )

    return charge


MAX_UNIT_CHARS = 200


def experiment_unit(request: Request, principal: Principal) -> str:
    """Who an online prompt A/B assigns a variant to: the ``X-Experiment-Unit`` header (a user
    of the caller's app) or else the caller's credential."""
    unit = request.headers.get("x-experiment-unit")
    if unit is None:
        return principal.id
    if not 0 < len(unit) <= MAX_UNIT_CHARS:
        raise ApiError(
            400,
            f"X-Experiment-Unit: must be 1 to {MAX_UNIT_CHARS} characters, not {len(unit)}.",
            param="X-Experiment-Unit",
        )
    return f"unit:{unit}"


def model_ids(res: Resources) -> list[str]:
    """The ids a client may name as ``model``: the served version and the registered name."""
    return [res.model_id, res.served.model_name]


def check_model(res: Resources, model: str | None) -> None:
    """A 404 ``model_not_found`` for a ``model`` this server does not serve (unset: the served
    one)."""
    if model is not None and model not in model_ids(res):
        raise ApiError(
            404,
            f"The model {model!r} does not exist here; this server serves "
            f"{' or '.join(repr(m) for m in model_ids(res))} (see GET /v1/models).",
            type="invalid_request_error",
            param="model",
            code="model_not_found",
        )


def check_context(res: Resources, prompt_tokens: int, max_new_tokens: int, param: str) -> None:
    """400 when a prompt and its new tokens do not fit the generator's context."""
    context = res.model_context
    if context and prompt_tokens + TEMPLATE_RESERVE + max_new_tokens > context:
        raise ApiError(
            400,
            f"{param}: {prompt_tokens} prompt tokens plus {max_new_tokens} new "
            f"tokens exceed the model's {context}-token context; shorten it or ask "
            "for fewer new tokens.",
            param=param,
            code="context_length_exceeded",
        )


def sse(data: Any) -> bytes:
    """One server-sent event of JSON (or a literal such as ``[DONE]``)."""
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n".encode()
