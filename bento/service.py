"""Slipway's BentoML 1.4 service: embeddings and generation from the registered champion.

Two services: ``Embedder`` owns the ONNX encoder behind an adaptively batched method, and
``Slipway`` (the API) composes it with ``bentoml.depends`` and runs the generator.
``bentoml serve bento.service:Slipway`` (or ``slipway serve``) starts both; BentoML adds
``/livez``, ``/readyz`` (ready once both services have loaded their models) and ``/metrics``.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any

import bentoml
import numpy as np
from fastapi import FastAPI
from pydantic import Field

from slipway import __version__
from slipway.config import ServeSettings, get_settings
from slipway.embedding import OnnxEmbedder
from slipway.generation import Sampling, load_generator
from slipway.onnx.session import default_providers
from slipway.serving import resolve_bundle

logger = logging.getLogger("slipway.service")
LIMITS = ServeSettings()

# A text must hold a visible character (pattern is a search): blank input is a 400 naming it.
Text = Annotated[str, Field(min_length=1, max_length=LIMITS.max_chars, pattern=r"\S")]
Texts = Annotated[list[Text], Field(min_length=1, max_length=LIMITS.max_texts)]


@bentoml.service(name="slipway-embedder", workers=1, traffic={"timeout": 60})
class Embedder:
    """The ONNX sentence encoder; concurrent requests are merged into one batch."""

    def __init__(self) -> None:
        served = resolve_bundle(LIMITS)
        self.model = OnnxEmbedder(
            served.bundle.role_dir("embedder"),
            providers=default_providers(LIMITS.providers),
            threads=get_settings().threads,
        )
        logger.info("Embedder %s v%s on %s", served.model_name, served.version, self.model.provider)

    @bentoml.api(batchable=True, max_batch_size=128, max_latency_ms=20)
    def embed_batch(self, texts: list[str]) -> np.ndarray:
        """Unit vectors for a (merged) batch of texts."""
        return self.model.embed(texts)

    @bentoml.api
    def describe(self) -> dict[str, Any]:
        """Dimension and provider of the encoder."""
        return {"dimension": self.model.dimension, "provider": self.model.provider}


info_app = FastAPI(title="Slipway read-only routes")


@bentoml.service(name="slipway", workers=1, traffic={"timeout": 300})
@bentoml.asgi_app(info_app, path="/v1")
class Slipway:
    """The API: ``POST /v1/embed``, ``POST /v1/generate``, ``GET /v1/models``."""

    embedder = bentoml.depends(Embedder)

    def __init__(self) -> None:
        served = resolve_bundle(LIMITS)
        self.served = served
        self.generator = load_generator(
            served.bundle.role_dir("generator"),
            served.bundle.runtime("generator"),
            threads=get_settings().threads,
            providers=default_providers(LIMITS.providers),
        )
        logger.info("Generator %s v%s on %s", served.model_name, served.version,
                    self.generator.provider)

    @bentoml.api(route="/v1/embed")
    async def embed(self, texts: Texts) -> dict[str, Any]:
        """Embed up to ``SLIPWAY_MAX_TEXTS`` texts; returns unit vectors in input order."""
        vectors = await self.embedder.to_async.embed_batch(texts)
        vectors = np.asarray(vectors)
        return {
            "object": "list",
            "model": f"{self.served.model_name}:{self.served.version}",
            "dimension": int(vectors.shape[1]),
            "embeddings": vectors.tolist(),
        }

    @bentoml.api(route="/v1/generate")
    def generate(
        self,
        prompt: Text,
        max_new_tokens: Annotated[int, Field(ge=1, le=LIMITS.max_new_tokens)] = 64,
        temperature: Annotated[float, Field(ge=0.0, le=2.0)] = 0.0,
        top_p: Annotated[float, Field(gt=0.0, le=1.0)] = 1.0,
        stop: Annotated[list[Annotated[str, Field(min_length=1)]], Field(max_length=8)] = [],  # noqa: B006
        seed: int | None = None,
    ) -> dict[str, Any]:
        """Complete a prompt (chat template applied); greedy when ``temperature`` is 0."""
        sampling = Sampling(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                            stop=tuple(stop), seed=seed)
        out = self.generator.generate(prompt, sampling)
        return {
            "model": f"{self.served.model_name}:{self.served.version}",
            "text": out.text,
            "finish_reason": out.finish_reason,
            "usage": {
                "prompt_tokens": out.prompt_tokens,
                "completion_tokens": len(out.token_ids),
                "total_tokens": out.prompt_tokens + len(out.token_ids),
            },
        }

    @info_app.get("/models")
    async def models(self) -> dict[str, Any]:
        """Served model versions, precisions and the active onnxruntime providers."""
        embedder = await self.embedder.to_async.describe()
        manifest = self.served.bundle.manifest
        return {
            "slipway_version": __version__,
            "registered_model": self.served.model_name,
            "version": self.served.version,
            "models": {
                "embedder": {**_brief(manifest, "embedder"), **embedder},
                "generator": {**_brief(manifest, "generator"), "provider": self.generator.provider},
            },
        }


def _brief(manifest: dict[str, Any], role: str) -> dict[str, Any]:
    info = manifest["models"][role]
    return {
        "precision": info.get("precision"),
        "runtime": info["config"].get("runtime"),
        "source": info["source"].get(f"{role}_origin"),
    }
