"""The served bundle in this process: its encoder and generator behind the clients the API's
use cases take (``slipway.resources.EmbedClient`` / ``GenerateClient``), and the
:class:`~slipway.resources.Resources` over them and the published index. The evaluation runs
``/v1/answer``'s own code path without a server."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from slipway.api.schemas import AnswerRequest, AnswerResponse
from slipway.config import ApiSettings, IndexSettings, ServeSettings, get_settings
from slipway.embedding import OnnxEmbedder
from slipway.generation import (
    Request,
    TextGenerator,
    complete,
    context_length,
    generation_events,
    load_generator,
)
from slipway.onnx.session import default_providers
from slipway.resources import Resources, build_resources
from slipway.serving import ServedBundle
from slipway.streams import iterate_in_thread


def local_api() -> ApiSettings:
    """Keys in the local file, rate limits in this process, no result cache: every question
    runs the models (a cache would answer a repeated question without them)."""
    return ApiSettings(profile="local", key_store="file", rate_limit_store="memory", cache="off")


class InProcessEncoder:
    """An :class:`OnnxEmbedder` as an encoder client (each call in a worker thread)."""

    def __init__(self, model: OnnxEmbedder) -> None:
        self.model = model

    async def embed(self, texts: list[str]) -> np.ndarray:
        return await asyncio.to_thread(self.model.embed, texts)

    async def describe(self) -> dict[str, Any]:
        return {
            "dimension": self.model.dimension,
            "provider": self.model.provider,
            "placement": "in-process",
        }


class InProcessGenerator:
    """A :class:`TextGenerator` as a generator client; one generation at a time (a lock),
    also for callers that are not on an event loop (:meth:`complete_sync`, the judge)."""

    def __init__(self, model: TextGenerator, context: int | None) -> None:
        self.model = model
        self.context = context
        self._lock = threading.Lock()

    def complete_sync(self, request: Request) -> dict[str, Any]:
        """A whole generation, in the calling thread."""
        with self._lock:
            return complete(self.model, request)

    async def complete(self, request: Request) -> dict[str, Any]:
        return await asyncio.to_thread(self.complete_sync, request)

    def _events(self, request: Request) -> Iterator[dict[str, Any]]:
        with self._lock:
            yield from generation_events(self.model, request)

    async def events(self, request: Request) -> AsyncIterator[dict[str, Any]]:
        async for event in iterate_in_thread(lambda: self._events(request)):
            yield event

    async def describe(self) -> dict[str, Any]:
        return {
            "provider": self.model.provider,
            "context_length": self.context,
            "concurrent": False,
            "guided": self.model.guided,
        }


@dataclass
class InProcessService:
    """What ``slipway serve`` would serve, in this process: the resources of one API worker,
    the models behind them, and the published index they read."""

    resources: Resources
    encoder: OnnxEmbedder
    generator: InProcessGenerator

    async def answer(self, request: AnswerRequest, unit: str = "-") -> AnswerResponse:
        """``/v1/answer`` for ``request``, without credentials or rate limits, over every
        document (``unit`` picks the answer prompt's variant where the bundle splits
        traffic)."""
        from slipway.access import EVERY_DOCUMENT
        from slipway.rag.answer import answer

        async def free(_tokens: int) -> None:
            return None

        return await answer(
            request, self.resources, free, EVERY_DOCUMENT, request_id="evaluation", unit=unit
        )


def in_process_service(
    served: ServedBundle,
    serve: ServeSettings | None = None,
    index: IndexSettings | None = None,
    threads: int | None = None,
    api: ApiSettings | None = None,
) -> InProcessService:
    """Load the bundle's encoder and generator here and build the resources over them and the
    published index ``serve.index_name``. Request tracing is off (the evaluation records its
    own run); by default keys are the local file's and the result cache is off, so every
    question runs the models."""
    serve = (serve or ServeSettings()).model_copy(
        update={"trace_sample_rate": 0.0, "feedback": False}
    )
    threads = get_settings().threads if threads is None else threads
    providers = default_providers(serve.providers)
    bundle = served.bundle
    encoder = OnnxEmbedder(
        bundle.role_dir("embedder"), providers=providers, threads=threads, spinning=False
    )
    model_dir = bundle.role_dir("generator")
    generator = InProcessGenerator(
        load_generator(model_dir, bundle.runtime("generator"), threads, providers),
        context_length(model_dir),
    )
    resources = build_resources(
        served,
        InProcessEncoder(encoder),
        generator,
        serve,
        api
        or ApiSettings(profile="local", key_store="file", rate_limit_store="memory", cache="off"),
        index or IndexSettings(),
    )
    resources.check_index()  # the published index now: a clear error when there is none
    return InProcessService(resources, encoder, generator)
