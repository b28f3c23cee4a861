"""Slipway's BentoML 1.4 services: the encoder, the generator and the API that composes them.

- ``Embedder`` owns the ONNX encoder behind an adaptively batched method: concurrent requests
  from every API worker merge into one encoder call.
- ``Generator`` owns the ONNX decoder: whole generations, and token streams.
- ``Slipway`` serves the HTTP API (``slipway.api.app``: FastAPI routes under ``/v1``) and
  reaches the other two with ``bentoml.depends``, so each scales and batches on its own.

``bentoml serve bento.service:Slipway`` (or ``slipway serve``) starts all three; BentoML adds
``/livez``, ``/readyz`` (ready once every service has loaded its model and the API holds the
published index) and ``/metrics``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import aiohttp
import bentoml
import numpy as np
from bentoml._internal.server.http import instruments
from bentoml.exceptions import ServiceUnavailable

from slipway.api import metrics
from slipway.api.app import api_routes, create_app
from slipway.api.errors import ApiError
from slipway.api.middleware import configure_json_logging
from slipway.config import ServeSettings, get_settings
from slipway.embedding import OnnxEmbedder
from slipway.generation import Request, complete, context_length, generation_events, load_generator
from slipway.onnx.session import default_providers
from slipway.resources import build_resources
from slipway.serving import resolve_bundle
from slipway.streams import iterate_in_thread, ndjson_events

logger = logging.getLogger("slipway.service")
LIMITS = ServeSettings()
api_app = create_app(LIMITS)  # its resources are set once the Slipway service has started
# The API's route templates (the catch-all 404 route aside), for bounded metric labels.
ROUTE_TEMPLATES = [(route.path_regex, route.path) for route in api_routes()]


class BoundedTrafficMetrics(instruments.RunnerTrafficMetricsMiddleware):
    """BentoML's traffic metrics labelled by route template instead of the raw path (BentoML
    labels its request counters and histograms with ``scope["path"]``: every random path a
    client sends, authenticated or not, would add a dozen series to ``/metrics`` for good).
    The app below still sees the real path."""

    def __init__(self, app: Any, **kwargs: Any) -> None:
        super().__init__(_real_path(app), **kwargs)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            scope = {
                **scope,
                "path": metrics.path_label(scope["path"], ROUTE_TEMPLATES),
                "slipway.path": scope["path"],
            }
        await super().__call__(scope, receive, send)


def _real_path(app: Any) -> Any:
    async def restored(scope: Any, receive: Any, send: Any) -> None:
        if "slipway.path" in scope:
            scope = {**scope, "path": scope["slipway.path"]}
            del scope["slipway.path"]
        await app(scope, receive, send)

    return restored


# BentoML imports the middleware class when it builds each service's app (after this module).
instruments.RunnerTrafficMetricsMiddleware = BoundedTrafficMetrics  # type: ignore[misc]


# BentoML's client recycles its connection pool every 100 requests or 300 s and closes the old
# pool with requests still in flight (bentoml/BentoML#5540): recycle effectively never.
KEEP_CONNECTIONS = {"max_requests": 2**31, "max_age": 10.0**9}
# The API writes one JSON access line per request (with its request id); BentoML's own plain
# access lines for the API and for every encoder call only cost CPU on the hot path.
NO_ACCESS_LOG = {"access": {"enabled": False}}


@bentoml.service(
    name="slipway-embedder",
    workers=1,
    traffic={"timeout": 60},
    runner_connection=KEEP_CONNECTIONS,
    logging=NO_ACCESS_LOG,
)
class Embedder:
    """The ONNX sentence encoder; concurrent requests are merged into one batch."""

    def __init__(self) -> None:
        configure_json_logging()
        served = resolve_bundle(LIMITS)
        self.model = OnnxEmbedder(
            served.bundle.role_dir("embedder"),
            providers=default_providers(LIMITS.providers),
            threads=get_settings().threads,
            spinning=False,  # the API and generator processes share these cores
        )
        logger.info("Embedder %s v%s on %s", served.model_name, served.version, self.model.provider)

    @bentoml.api(
        batchable=LIMITS.embed_max_batch > 1,
        max_batch_size=max(2, LIMITS.embed_max_batch),
        max_latency_ms=LIMITS.embed_max_latency_ms,
    )
    def embed_batch(self, texts: list[str]) -> np.ndarray:
        """Unit vectors for a (merged) batch of texts."""
        metrics.batch_size(len(texts))
        return self.model.embed(texts)

    @bentoml.api
    def describe(self) -> dict[str, Any]:
        """Dimension, provider and batching of the encoder."""
        return {
            "dimension": self.model.dimension,
            "provider": self.model.provider,
            "max_batch_size": LIMITS.embed_max_batch,
        }


@bentoml.service(
    name="slipway-generator",
    workers=1,
    traffic={"timeout": 300},
    runner_connection=KEEP_CONNECTIONS,
)
class Generator:
    """The ONNX decoder (onnxruntime-genai or optimum, per the bundle's manifest)."""

    def __init__(self) -> None:
        configure_json_logging()
        served = resolve_bundle(LIMITS)
        model_dir = served.bundle.role_dir("generator")
        self.model = load_generator(
            model_dir,
            served.bundle.runtime("generator"),
            threads=get_settings().threads,
            providers=default_providers(LIMITS.providers),
        )
        self.context = context_length(model_dir)
        logger.info(
            "Generator %s v%s on %s", served.model_name, served.version, self.model.provider
        )

    @bentoml.api
    def complete(self, request: dict[str, Any]) -> dict[str, Any]:
        """A whole generation for a :class:`slipway.generation.Request` dict."""
        return complete(self.model, Request.from_dict(request))

    @bentoml.api
    async def stream(self, request: dict[str, Any]) -> AsyncGenerator[str, None]:
        """Newline-delimited JSON events of a generation, as the tokens are decoded."""
        call = Request.from_dict(request)
        async for event in iterate_in_thread(lambda: generation_events(self.model, call)):
            yield json.dumps(event) + "\n"

    @bentoml.api
    def describe(self) -> dict[str, Any]:
        """Provider and context window of the decoder."""
        return {"provider": self.model.provider, "context_length": self.context}


def _unavailable(role: str, exc: Exception) -> ApiError:
    logger.warning("The %s service failed: %r", role, exc)
    return ApiError(
        503,
        f"The {role} is overloaded or restarting; retry shortly.",
        type="server_error",
        code="backend_unavailable",
    )


class _RemoteEmbedder:
    def __init__(self, service: Any) -> None:
        self.service = service

    async def embed(self, texts: list[str]) -> np.ndarray:
        try:
            return np.asarray(await self.service.to_async.embed_batch(texts))
        except (ServiceUnavailable, aiohttp.ClientError) as exc:
            raise _unavailable("encoder", exc) from exc

    async def describe(self) -> dict[str, Any]:
        return dict(await self.service.to_async.describe())


class _RemoteGenerator:
    def __init__(self, service: Any) -> None:
        self.service = service

    async def complete(self, request: Request) -> dict[str, Any]:
        try:
            return dict(await self.service.to_async.complete(request.to_dict()))
        except (ServiceUnavailable, aiohttp.ClientError) as exc:
            raise _unavailable("generator", exc) from exc

    async def events(self, request: Request) -> AsyncIterator[dict[str, Any]]:
        async for event in ndjson_events(self.service.to_async.stream(request.to_dict())):
            yield event

    async def describe(self) -> dict[str, Any]:
        return dict(await self.service.to_async.describe())


@bentoml.service(
    name="slipway", workers=LIMITS.api_workers, traffic={"timeout": 300}, logging=NO_ACCESS_LOG
)
@bentoml.asgi_app(api_app, path="/")
class Slipway:
    """The API; see ``slipway.api.app`` for the routes and ``README.md`` for a session."""

    embedder = bentoml.depends(Embedder)
    generator = bentoml.depends(Generator)

    def __init__(self) -> None:
        configure_json_logging()
        self.resources = build_resources(
            resolve_bundle(LIMITS),
            _RemoteEmbedder(self.embedder),
            _RemoteGenerator(self.generator),
            LIMITS,
        )
        api_app.state.resources = self.resources
        self.resources.ready()  # open the published index now, not on the first request

    async def __is_ready__(self) -> bool:
        """Ready when the published index is loaded (the models are, once this exists) and a
        concurrency slot is free: a saturated worker leaves the load balancer for a while."""
        load = api_app.state.load
        if load.saturated:
            logger.warning("Not ready: all %d slots taken", load.max_concurrency)
            return False
        return await asyncio.to_thread(self.resources.ready)

    async def __is_alive__(self) -> bool:
        """Alive while the worker's event loop and worker threads make progress (a watchdog
        probes them every second, from the first probe on)."""
        watchdog = api_app.state.watchdog
        watchdog.ensure_started(asyncio.get_running_loop())
        return bool(watchdog.alive())
