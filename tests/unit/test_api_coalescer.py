"""Tier 1: concurrent embed calls of one API worker become one encoder call, in order."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from slipway.embedding import OnnxEmbedder
from slipway.resources import Coalescer

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class LocalEncoder:
    """The real ONNX encoder in this process, counting the calls it gets."""

    def __init__(self, model_dir: Path) -> None:
        self.model = OnnxEmbedder(model_dir, threads=1)
        self.calls: list[int] = []

    async def embed(self, texts: list[str]) -> np.ndarray:
        self.calls.append(len(texts))
        if any(t == "fail" for t in texts):
            raise RuntimeError("encoder failed")
        return self.model.embed(texts)

    async def describe(self) -> dict[str, object]:
        return {}


async def test_concurrent_calls_share_one_encoder_call(tiny_onnx_embedder: Path) -> None:
    encoder = LocalEncoder(tiny_onnx_embedder)
    coalescer = Coalescer(encoder, max_texts=64, wait_ms=20)
    requests = [[f"text {i}"] for i in range(10)] + [["a", "b", "c"]]
    results = await asyncio.gather(*(coalescer.embed(r) for r in requests))
    assert encoder.calls == [13]
    for texts, got in zip(requests, results, strict=True):
        assert np.allclose(got, encoder.model.embed(texts), atol=1e-5)


async def test_batches_are_capped_and_errors_reach_every_caller(tiny_onnx_embedder: Path) -> None:
    encoder = LocalEncoder(tiny_onnx_embedder)
    coalescer = Coalescer(encoder, max_texts=4, wait_ms=20)
    await asyncio.gather(*(coalescer.embed([f"t{i}"]) for i in range(10)))
    assert sum(encoder.calls) == 10 and max(encoder.calls) <= 4
    outcomes = await asyncio.gather(
        coalescer.embed(["ok"]), coalescer.embed(["fail"]), return_exceptions=True
    )
    assert all(isinstance(o, RuntimeError) for o in outcomes)
    off = Coalescer(encoder, max_texts=1)
    encoder.calls.clear()
    await asyncio.gather(*(off.embed([f"t{i}"]) for i in range(3)))
    assert encoder.calls == [1, 1, 1]
