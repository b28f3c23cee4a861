"""Slipway's BentoML 1.4 services: the API, the generator and (optionally) the encoder.

- ``Slipway`` serves the HTTP API (``slipway.api.app``: FastAPI routes under ``/v1``) with the
  ONNX encoder in each worker, continuously batched (``SLIPWAY_ENCODER=api``, the default:
  measured faster per CPU than a hop to a separate encoder, see ``bench/serve.py``).
- ``Generator`` owns the ONNX decoder: whole generations and token streams; with
  onnxruntime-genai, concurrent requests are decoded together (continuous batching).
- ``SlipwayRemoteEncoder`` + ``Embedder``: the same API calling the encoder as a service of
  its own (``SLIPWAY_ENCODER=service``), for an encoder that scales apart from the API.

``slipway serve`` picks the API service from ``SLIPWAY_ENCODER`` and starts it with its
dependencies; BentoML adds ``/livez``, ``/readyz`` (ready once every service has loaded its
model and the API holds the published index) and ``/metrics``. Settings are read when a
service starts, never when this module is imported; BentoML's own service options (worker
counts) come from ``BENTOML_CONFIG_OPTIONS``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

import aiohttp
import bentoml
import numpy as np
from bentoml._internal.server.http import instruments, traffic
from bentoml.exceptions import InvalidArgument, ServiceUnavailable
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt

from slipway.api import metrics
from slipway.api.app import api_routes, create_app
from slipway.api.errors import ApiError, overloaded, starting
from slipway.api.middleware import PathGuard, StartDeadline, configure_json_logging
from slipway.config import ServeSettings, get_settings
from slipway.embedding import OnnxEmbedder
from slipway.embedding.batcher import ContinuousBatcher
from slipway.gcwatch import PauseWatch, freeze_startup_objects
from slipway.generation import (
    Admission,
    DecoderBusy,
    GuidanceError,
    Request,
    complete,
    context_length,
    generation_events,
    load_generator,
)
from slipway.onnx.session import default_providers
from slipway.priority import built_below_event_loops
from slipway.resources import Coalescer, EmbedClient, build_resources
from slipway.serving import resolve_bundle
from slipway.streams import iterate_in_thread, ndjson_events
from slipway.wire import (
    EncoderInfo,
    EncoderTexts,
    GenerationRequest,
    GenerationResult,
    GeneratorInfo,
)

logger = logging.getLogger("slipway.service")
# The API's route templates (the catch-all 404 route aside), for bounded metric labels.
ROUTE_TEMPLATES = [(route.path_regex, route.path) for route in api_routes()]


class DeferredApp:
    """The ASGI app BentoML mounts: the API, built when the service starts (from the settings
    of that moment; nothing is read when this module is imported)."""

    def __init__(self) -> None:
        self.app: FastAPI | None = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if self.app is None:  # BentoML serves only after the service's __init__; be safe
            if scope["type"] == "http":
                error = starting()
                await JSONResponse(error.body(), error.status, error.headers())(
                    scope, receive, send
                )
            return
        await self.app(scope, receive, send)


api_app = DeferredApp()


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


# BentoML imports the middleware classes when it builds each service's app (after this module).
instruments.RunnerTrafficMetricsMiddleware = BoundedTrafficMetrics  # type: ignore[misc]
# BentoML's TimeoutMiddleware holds every request's objects for the whole traffic timeout
# (its timer is never cancelled): see StartDeadline.
traffic.TimeoutMiddleware = StartDeadline  # type: ignore[misc]


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
    """The ONNX sentence encoder as a service of its own (``SLIPWAY_ENCODER=service``): the
    API workers' requests are continuously batched (one encoder call at a time, carrying
    whatever arrived during the last)."""

    def __init__(self) -> None:
        configure_json_logging()
        serve = ServeSettings()
        self.batcher = local_encoder(serve, "service")
        logger.info("Embedder on %s", self.batcher.encoder.provider)

    @bentoml.api
    async def embed(self, texts: EncoderTexts) -> np.ndarray:
        """Unit vectors (float32, one row per text) for the texts, in order."""
        return await self.batcher.embed(texts)

    @bentoml.api
    async def describe(self) -> EncoderInfo:
        """Dimension, provider and batching of the encoder."""
        return self.batcher.info


def local_encoder(serve: ServeSettings, placement: Literal["api", "service"]) -> LocalEncoder:
    """The served bundle's encoder in this process, continuously batched."""
    served = resolve_bundle(serve)

    def build() -> LocalEncoder:  # its threads (onnxruntime's, the batcher's) below the loop
        model = OnnxEmbedder(
            served.bundle.role_dir("embedder"),
            providers=default_providers(serve.providers),
            threads=get_settings().threads,
            spinning=False,  # the other processes share these cores
        )
        return LocalEncoder(model, serve.embed_max_batch_tokens, placement)

    encoder = built_below_event_loops(serve.compute_niceness, build)
    started = time.perf_counter()
    shape = encoder.encoder.warm_up()  # its memory claimed now: RSS at start is its working set
    logger.info(
        "Encoder %s v%s on %s (%s), warmed up with a %dx%d batch in %.2f s",
        served.model_name,
        served.version,
        encoder.encoder.provider,
        placement,
        *shape,
        time.perf_counter() - started,
    )
    return encoder


class LocalEncoder:
    """An encoder client over a :class:`ContinuousBatcher` in this process."""

    def __init__(
        self, model: OnnxEmbedder, max_batch_tokens: int, placement: Literal["api", "service"]
    ) -> None:
        self.encoder = model
        self.batcher = ContinuousBatcher(
            model, max_batch_tokens, on_batch=lambda texts, _tokens: metrics.batch_size(texts)
        )
        self.info = EncoderInfo(
            dimension=model.dimension,
            provider=model.provider,
            max_batch_tokens=max_batch_tokens,
            placement=placement,
        )

    async def embed(self, texts: list[str]) -> np.ndarray:
        return await self.batcher.embed(texts)

    async def describe(self) -> dict[str, Any]:
        return self.info.model_dump()


@bentoml.service(
    name="slipway-generator",
    workers=1,
    traffic={"timeout": 300},
    runner_connection=KEEP_CONNECTIONS,
)
class Generator:
    """The ONNX decoder (onnxruntime-genai or optimum, per the bundle's manifest). With
    onnxruntime-genai, concurrent requests are decoded together (continuous batching)."""

    def __init__(self) -> None:
        configure_json_logging()
        serve = ServeSettings()
        served = resolve_bundle(serve)
        model_dir = served.bundle.role_dir("generator")
        self.runtime = served.bundle.runtime("generator")
        self.model = built_below_event_loops(  # decoding threads below the encoder's
            serve.decoder_niceness,
            lambda: load_generator(
                model_dir,
                self.runtime,
                threads=get_settings().threads,
                providers=default_providers(serve.providers),
                concurrent=Admission(
                    serve.gen_max_batch, serve.gen_max_waiting, serve.gen_max_queue_s
                ),
            ),
            idle=serve.decoder_idle,
        )
        self.context = context_length(model_dir)
        # Every stream waits in a thread for its tokens while the engine decodes them all.
        self.streams = ThreadPoolExecutor(serve.max_concurrency, "slipway-stream")
        logger.info(
            "Generator %s v%s on %s", served.model_name, served.version, self.model.provider
        )

    @bentoml.api
    def complete(self, request: GenerationRequest) -> GenerationResult:
        """A whole generation (400 for an output constraint the decoder cannot apply)."""
        try:
            return GenerationResult.model_validate(complete(self.model, request.request()))
        except GuidanceError as exc:
            raise InvalidArgument(str(exc)) from exc
        except DecoderBusy as exc:
            raise ServiceUnavailable(str(exc)) from exc

    @bentoml.api
    async def stream(self, request: GenerationRequest) -> AsyncGenerator[str, None]:
        """Newline-delimited JSON events of a generation, as the tokens are decoded."""
        call = request.request()
        try:
            async for event in iterate_in_thread(
                lambda: generation_events(self.model, call), self.streams
            ):
                yield json.dumps(event) + "\n"
        except DecoderBusy as exc:  # before any token: the caller answers 503, not a cut stream
            yield json.dumps({"error": {"code": "busy", "message": str(exc)}}) + "\n"

    @bentoml.api
    def describe(self) -> GeneratorInfo:
        """Provider and context window of the decoder, and whether it batches requests."""
        return GeneratorInfo(
            provider=self.model.provider,
            context_length=self.context,
            concurrent=self.runtime == "genai",
            guided=self.model.guided,
        )


def _unavailable(role: str, exc: Exception) -> ApiError:
    logger.warning("The %s service failed: %r", role, exc)
    return ApiError(
        503,
        f"The {role} is overloaded or restarting; retry shortly.",
        type="server_error",
        code="backend_unavailable",
    )


def _detail(exc: Exception) -> str:
    """The message of a service's JSON error body (``{"error": "..."}``)."""
    try:
        body = json.loads(str(exc))
        return str((body[0] if isinstance(body, list) else body)["error"])
    except (ValueError, KeyError, TypeError, IndexError):
        return str(exc)


class _RemoteEmbedder:
    def __init__(self, service: Any) -> None:
        self.service = service

    async def embed(self, texts: list[str]) -> np.ndarray:
        try:
            return np.asarray(await self.service.to_async.embed(texts))
        except (ServiceUnavailable, aiohttp.ClientError) as exc:
            raise _unavailable("encoder", exc) from exc

    async def describe(self) -> dict[str, Any]:
        info = await self.service.to_async.describe()
        return EncoderInfo.model_validate(info).model_dump()


# A pooled keep-alive connection that the other service closes as a request goes out fails
# the request before it was read (ServerDisconnectedError, or a reset); sent again on a fresh
# connection it is served. Once, and only before any reply came.
STALE_CONNECTION = (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)


def _resend_once() -> AsyncRetrying:
    return AsyncRetrying(
        stop=stop_after_attempt(2),
        retry=retry_if_exception_type(STALE_CONNECTION),
        reraise=True,
        before_sleep=lambda state: logger.info(
            "Resending after a stale connection: %r", state.outcome and state.outcome.exception()
        ),
    )


class _RemoteGenerator:
    def __init__(self, service: Any) -> None:
        self.service = service

    async def complete(self, request: Request) -> dict[str, Any]:
        try:
            async for attempt in _resend_once():
                with attempt:
                    result = await self.service.to_async.complete(GenerationRequest.of(request))
        except InvalidArgument as exc:  # the request's output constraint
            raise ApiError(
                400, _detail(exc), code="invalid_output_constraint", param="response_format"
            ) from exc
        except ServiceUnavailable as exc:  # the generator refused the request: queue full
            logger.info("Generator busy: %s", _detail(exc))
            raise overloaded() from exc
        except aiohttp.ClientError as exc:
            raise _unavailable("generator", exc) from exc
        return GenerationResult.model_validate(result).model_dump()

    async def events(self, request: Request) -> AsyncIterator[dict[str, Any]]:
        try:
            async for attempt in _resend_once():
                with attempt:  # the first event, or the stream fails before any reply came
                    events = aiter(
                        ndjson_events(self.service.to_async.stream(GenerationRequest.of(request)))
                    )
                    first = await anext(events, None)
            event = first
            while event is not None:
                if "error" in event:  # the generator refused the request (its queue is full)
                    logger.info("Generator busy: %s", event["error"].get("message"))
                    raise overloaded()
                yield event
                event = await anext(events, None)
        except (ServiceUnavailable, aiohttp.ClientError) as exc:
            raise _unavailable("generator", exc) from exc

    async def describe(self) -> dict[str, Any]:
        info = await self.service.to_async.describe()
        return GeneratorInfo.model_validate(info).model_dump()


class _Api:
    """What both API services do; they differ in where the encoder runs."""

    generator: Any

    def _encoder(self, serve: ServeSettings) -> EmbedClient:
        raise NotImplementedError

    def __init__(self) -> None:
        configure_json_logging()
        serve = ServeSettings()
        self.resources = build_resources(
            resolve_bundle(serve), self._encoder(serve), _RemoteGenerator(self.generator), serve
        )
        api_app.app = create_app(serve, self.resources)
        self.resources.ready()  # open the published index now, not on the first request
        PauseWatch(metrics.gc_pause).install()
        if serve.gc_freeze:
            logger.info(
                "%d start-up objects frozen out of garbage collection", freeze_startup_objects()
            )

    @bentoml.on_shutdown
    async def close(self) -> None:
        """Usage records written and upstream connections closed before the worker exits."""
        await self.resources.close()

    async def __is_ready__(self) -> bool:
        """Ready when the published index is loaded (the models are, once this exists) and a
        concurrency slot is free: a saturated worker leaves the load balancer for a while."""
        app = api_app.app
        if app is None:
            return False
        load = app.state.load
        if load.saturated:
            logger.warning("Not ready: all %d slots taken", load.max_concurrency)
            return False
        return await asyncio.to_thread(self.resources.ready)

    async def __is_alive__(self) -> bool:
        """Alive while the worker's event loop and worker threads make progress (a watchdog
        probes them every second, from the first probe on)."""
        if api_app.app is None:
            return True  # still starting: BentoML's startup probe covers this
        watchdog = api_app.app.state.watchdog
        watchdog.ensure_started(asyncio.get_running_loop())
        return bool(watchdog.alive())


@bentoml.service(name="slipway", workers=1, traffic={"timeout": 300}, logging=NO_ACCESS_LOG)
@bentoml.asgi_app(api_app, path="/")
class Slipway(_Api):
    """The API with the encoder in each worker (``SLIPWAY_ENCODER=api``, the default): no
    hop per embedding; see ``slipway.api.app`` for the routes and ``README.md`` for a
    session. Worker count: ``BENTOML_CONFIG_OPTIONS=services.slipway.workers=N`` (``slipway
    serve`` sets it from ``SLIPWAY_API_WORKERS``)."""

    generator = bentoml.depends(Generator)

    def _encoder(self, serve: ServeSettings) -> EmbedClient:
        return local_encoder(serve, "api")


@bentoml.service(name="slipway", workers=1, traffic={"timeout": 300}, logging=NO_ACCESS_LOG)
@bentoml.asgi_app(api_app, path="/")
class SlipwayRemoteEncoder(_Api):
    """The API calling the encoder as a service of its own (``SLIPWAY_ENCODER=service``): the
    encoder scales apart from the API workers, at a hop per (worker-merged) batch."""

    generator = bentoml.depends(Generator)
    embedder = bentoml.depends(Embedder)

    def _encoder(self, serve: ServeSettings) -> EmbedClient:
        return Coalescer(_RemoteEmbedder(self.embedder), serve.embed_max_batch)


for _service in (Slipway, SlipwayRemoteEncoder):  # before routing: see PathGuard
    _service.add_asgi_middleware(PathGuard)
