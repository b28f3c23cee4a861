"""Routing by ``model``: which configured model a name means (404 unknown, 403 not allowed for
the caller), its chain of fallbacks with upstreams in cooldown skipped, and one loop that tries
the chain in order until a model answers. No web framework here: the routes pass an
``attempt`` per model (the served bundle, or an upstream)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx

from slipway.api.auth import Principal
from slipway.api.errors import ApiError
from slipway.routing.models import ModelsConfig, ModelSpec
from slipway.routing.upstream import Upstream, UpstreamError, UpstreamStream

T = TypeVar("T")


class Cooldowns:
    """Upstreams that failed lately, skipped until their cooldown ends (per worker)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._until: dict[str, float] = {}
        self._lock = threading.Lock()

    def cooling(self, model: str) -> bool:
        """Whether ``model`` is in its cooldown now."""
        until = self._until.get(model)
        return until is not None and self.clock() < until

    def failed(self, spec: ModelSpec) -> None:
        """Start ``spec``'s cooldown (upstreams only: the served bundle is never skipped)."""
        if not spec.local and spec.cooldown_s > 0:
            with self._lock:
                self._until[spec.id] = self.clock() + spec.cooldown_s

    def succeeded(self, model: str) -> None:
        """End ``model``'s cooldown."""
        if model in self._until:
            with self._lock:
                self._until.pop(model, None)


@dataclass(frozen=True)
class Routed:
    """What answered: the result, the model, and how many models failed before it."""

    result: Any
    spec: ModelSpec
    fallbacks: int

    def headers(self) -> dict[str, str]:
        """``X-Slipway-Model`` and ``X-Slipway-Fallbacks``."""
        return {"X-Slipway-Model": self.spec.id, "X-Slipway-Fallbacks": str(self.fallbacks)}


def retryable(exc: BaseException) -> bool:
    """Whether another model of the chain should be tried after ``exc``: an upstream's 429,
    5xx, timeout or lost connection, or the served bundle overloaded or late (503, 504)."""
    if isinstance(exc, UpstreamError):
        return exc.retryable
    return isinstance(exc, ApiError) and exc.status in (503, 504)


class Router:
    """The models a client may name and the loop over their fallback chains."""

    def __init__(
        self,
        config: ModelsConfig | None,
        served_ids: tuple[str, ...],
        upstream: Upstream,
        cooldowns: Cooldowns | None = None,
    ) -> None:
        self.upstream = upstream
        self.cooldowns = cooldowns or Cooldowns()
        self.served_ids = served_ids
        self.models: dict[str, ModelSpec] = {i: ModelSpec(id=i) for i in served_ids}
        if config is not None:
            config.check_fallbacks(served_ids)
            self.models.update(config.by_id())
        self.default = self.models[served_ids[0]]

    @property
    def ids(self) -> list[str]:
        """Every model id, the served bundle's first."""
        return list(self.models)

    def visible(self, caller: Principal) -> list[ModelSpec]:
        """The models ``caller`` may call."""
        return [m for m in self.models.values() if caller.allows_model(m.id)]

    def resolve(self, model: str | None, caller: Principal) -> ModelSpec:
        """The model ``model`` names (unset: the served bundle): 404 ``model_not_found``
        when there is none, 403 ``model_not_allowed`` when ``caller`` may not call it."""
        if model is None:
            spec = self.default
        else:
            found = self.models.get(model)
            if found is None:
                shown = [m.id for m in self.visible(caller)]
                raise ApiError(
                    404,
                    f"The model {model!r} does not exist here; this server serves "
                    f"{' or '.join(repr(m) for m in shown) or 'nothing you may call'} "
                    "(see GET /v1/models).",
                    param="model",
                    code="model_not_found",
                )
            spec = found
        if not caller.allows_model(spec.id) and not (
            model is None and any(caller.allows_model(i) for i in self.served_ids)
        ):
            raise ApiError(
                403,
                f"This credential may not call the model {spec.id!r}.",
                type="permission_error",
                param="model",
                code="model_not_allowed",
            )
        return spec

    def chain(self, spec: ModelSpec, caller: Principal | None = None) -> list[ModelSpec]:
        """``spec`` then its fallbacks (those ``caller`` may call), each upstream in its
        cooldown skipped unless it is the last option."""
        options = [spec] + [
            self.models[f]
            for f in spec.fallbacks
            if f in self.models and (caller is None or caller.allows_model(f))
        ]
        last = len(options) - 1
        return [o for n, o in enumerate(options) if n == last or not self.cooldowns.cooling(o.id)]

    async def call(
        self,
        spec: ModelSpec,
        attempt: Callable[[ModelSpec], Awaitable[T]],
        caller: Principal | None = None,
    ) -> Routed:
        """``attempt`` on each model of ``spec``'s chain until one answers; a failure worth
        a fallback starts the model's cooldown; the last failure is the client's error."""
        last: BaseException | None = None
        failed = 0
        for option in self.chain(spec, caller):
            try:
                result = await attempt(option)
            except (UpstreamError, ApiError) as exc:
                if not retryable(exc):
                    raise error_of(exc, option) from exc
                self.cooldowns.failed(option)
                last, failed = exc, failed + 1
                continue
            self.cooldowns.succeeded(option.id)
            return Routed(result, option, failed)
        assert last is not None  # a chain holds at least its model
        raise error_of(last, spec) from last


def error_of(exc: BaseException, spec: ModelSpec) -> ApiError:
    """The client's error for a failed attempt."""
    if isinstance(exc, UpstreamError):
        return exc.api_error(spec.id)
    assert isinstance(exc, ApiError)
    return exc


# --- streams passed through ----------------------------------------------------------------

Usage = tuple[int, int]  # prompt and completion tokens


async def relay(
    stream: UpstreamStream,
    model: str,
    client_wants_usage: bool,
    done: Callable[[Usage | None, int, bool], None],
) -> AsyncIterator[bytes]:
    """The upstream's events as they come, each naming ``model``; its usage chunk passed on
    only when the client asked for it. A stream that breaks ends with an error event in
    OpenAI's style, then ``[DONE]``. ``done`` gets the usage (None when the upstream sent
    none), the count of content events and whether the stream broke, once it ends however
    it ends."""
    used: Usage | None = None
    pieces = 0
    finished = broken = False
    try:
        async for line in stream.lines_after_head():
            if not line.startswith("data:"):
                if line.startswith(":"):  # a comment (keep-alive)
                    yield f"{line}\n\n".encode()
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                finished = True
                break
            try:
                event = json.loads(data)
            except ValueError:
                continue
            if isinstance(event, dict):
                if isinstance(event.get("usage"), dict):
                    u = event["usage"]
                    used = (int(u.get("prompt_tokens") or 0), int(u.get("completion_tokens") or 0))
                    if not client_wants_usage:
                        if not event.get("choices"):
                            continue  # the usage-only chunk the client did not ask for
                        event.pop("usage")
                if "model" in event:
                    event["model"] = model
                if event.get("choices"):
                    pieces += 1
            yield f"data: {json.dumps(event, separators=(',', ':'))}\n\n".encode()
        if not finished:
            raise httpx.RemoteProtocolError("the upstream closed the stream before [DONE]")
    except (httpx.HTTPError, UpstreamError) as exc:
        broken = True
        detail = {
            "message": f"The upstream of {model!r} broke off the stream: {type(exc).__name__}.",
            "type": "server_error",
            "param": None,
            "code": "upstream_stream_broken",
        }
        yield f"data: {json.dumps({'error': detail})}\n\n".encode()
    finally:
        await stream.close()
        done(used, pieces, broken)
    yield b"data: [DONE]\n\n"
