"""The persistent embedding cache, with a real (tiny) ONNX embedder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from slipway.embedding import OnnxEmbedder
from slipway.embedding.cache import EmbeddingCache, embed_cached
from slipway.onnx.build import BuildConfig, export


class CountingEmbedder:
    """A real OnnxEmbedder that records how many texts it was asked to embed."""

    def __init__(self, inner: OnnxEmbedder) -> None:
        self.inner, self.dimension, self.calls = inner, inner.dimension, 0

    def embed(self, texts):
        self.calls += len(texts)
        return self.inner.embed(texts)


@pytest.fixture(scope="module")
def onnx_embedder(tiny_embedder: Path, tmp_path_factory: pytest.TempPathFactory) -> OnnxEmbedder:
    out = export(
        tiny_embedder, tmp_path_factory.mktemp("tiny-onnx"), BuildConfig(task="feature-extraction")
    )
    return OnnxEmbedder(out, threads=1)


def test_second_run_embeds_nothing_and_returns_the_same_vectors(onnx_embedder, tmp_path) -> None:
    texts = ["the quick brown fox", "paris is a city", "the quick brown fox", "hello world"]
    counting = CountingEmbedder(onnx_embedder)
    cache = EmbeddingCache(tmp_path / "cache.sqlite")
    first, hits = embed_cached(counting, "m1", texts, cache)
    assert hits == 0 and counting.calls == 3  # the duplicate text is embedded once
    np.testing.assert_allclose(first, onnx_embedder.embed(texts), atol=1e-6)
    cache.close()
    reopened = EmbeddingCache(tmp_path / "cache.sqlite")  # persisted across processes
    second, hits = embed_cached(counting, "m1", texts, reopened)
    assert hits == 4 and counting.calls == 3
    np.testing.assert_array_equal(first, second)
    # A new model version re-embeds everything; the old entries stay for rollbacks.
    _, hits = embed_cached(counting, "m2", texts[:2], reopened)
    assert hits == 0 and counting.calls == 5
    assert reopened.count("m1") == 3 and reopened.count() == 5
    empty, hits = embed_cached(counting, "m1", [], reopened)
    assert empty.shape == (0, onnx_embedder.dimension) and hits == 0
