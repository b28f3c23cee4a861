"""Tier 1: continuous batching of the encoder and of the decoder, with the real ONNX models.

The encoder takes whatever is queued the moment it is free (no timer), within a token budget,
and never encodes texts whose caller left. The decoder (onnxruntime-genai's engine) decodes
concurrent requests together with the same greedy output as one at a time."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Encoding

from slipway.embedding import OnnxEmbedder
from slipway.embedding.batcher import ContinuousBatcher
from slipway.generation import DecoderBusy, GenAIDecoder, GenAIEngineDecoder, Sampling
from tests.servers import wait_until


class GatedEncoder:
    """The real encoder; its first call waits for ``release`` so that requests queue up."""

    def __init__(self, model_dir: Path) -> None:
        self.model = OnnxEmbedder(model_dir, threads=1)
        self.dimension = self.model.dimension
        self.calls: list[list[int]] = []  # tokens of each text, per encoder call
        self.started = threading.Event()
        self.release = threading.Event()

    def encode(self, texts: Sequence[str]) -> list[Encoding]:
        if "bad tokenizer input" in texts:
            raise ValueError("cannot tokenize")
        return self.model.encode(texts)

    def embed_encodings(self, encodings: Sequence[Encoding]) -> np.ndarray:
        self.calls.append([len(e.ids) for e in encodings])
        self.started.set()
        self.release.wait(30)
        return self.model.embed_encodings(encodings)


async def _queued(batcher: ContinuousBatcher, n: int) -> None:
    for _ in range(500):
        if batcher.queued >= n:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{batcher.queued} requests queued, not {n}")


def test_what_queues_while_the_encoder_runs_is_its_next_call(tiny_onnx_embedder: Path) -> None:
    encoder = GatedEncoder(tiny_onnx_embedder)
    batcher = ContinuousBatcher(encoder, max_batch_tokens=10_000)
    requests = [["first"]] + [[f"text number {i}"] for i in range(9)] + [["a", "b c", "d e f"]]

    async def scenario() -> list[np.ndarray]:
        first = asyncio.create_task(batcher.embed(requests[0]))
        await asyncio.to_thread(encoder.started.wait, 30)  # a lone request runs at once
        rest = [asyncio.create_task(batcher.embed(r)) for r in requests[1:]]
        await _queued(batcher, len(rest))
        encoder.release.set()
        return await asyncio.gather(first, *rest)

    results = asyncio.run(scenario())
    batcher.close()
    assert [len(call) for call in encoder.calls] == [1, 12]
    for texts, got in zip(requests, results, strict=True):
        assert got.shape == (len(texts), encoder.dimension)
        assert np.allclose(got, encoder.model.embed(texts), atol=1e-5)


def test_calls_keep_to_the_token_budget_in_arrival_order(tiny_onnx_embedder: Path) -> None:
    encoder = GatedEncoder(tiny_onnx_embedder)
    per_text = len(encoder.model.encode(["alpha beta gamma"])[0].ids)
    budget = 3 * per_text
    batcher = ContinuousBatcher(encoder, max_batch_tokens=budget)
    long_request = ["alpha beta gamma"] * 5  # over the budget on its own: it runs alone

    async def scenario() -> list[np.ndarray]:
        first = asyncio.create_task(batcher.embed(["alpha beta gamma"]))
        await asyncio.to_thread(encoder.started.wait, 30)
        rest = [asyncio.create_task(batcher.embed(["alpha beta gamma"])) for _ in range(7)]
        rest.append(asyncio.create_task(batcher.embed(long_request)))
        await _queued(batcher, len(rest))
        encoder.release.set()
        return await asyncio.gather(first, *rest)

    results = asyncio.run(scenario())
    batcher.close()
    assert [len(call) for call in encoder.calls] == [1, 3, 3, 1, 5]
    assert all(sum(call) <= budget for call in encoder.calls[:4])  # the last: one request
    assert results[-1].shape == (5, encoder.dimension)


def test_callers_that_left_are_not_encoded_and_bad_input_fails_alone(
    tiny_onnx_embedder: Path,
) -> None:
    encoder = GatedEncoder(tiny_onnx_embedder)
    batcher = ContinuousBatcher(encoder)

    async def scenario() -> tuple[object, ...]:
        first = asyncio.create_task(batcher.embed(["first"]))
        await asyncio.to_thread(encoder.started.wait, 30)
        gone = asyncio.create_task(batcher.embed(["one", "two", "three"]))
        bad = asyncio.create_task(batcher.embed(["bad tokenizer input"]))
        kept = asyncio.create_task(batcher.embed(["kept"]))
        await _queued(batcher, 3)
        gone.cancel()  # a deadline or a disconnect
        encoder.release.set()
        return tuple(await asyncio.gather(first, gone, bad, kept, return_exceptions=True))

    _, gone, bad, kept = asyncio.run(scenario())
    assert isinstance(gone, asyncio.CancelledError)
    assert isinstance(bad, ValueError)
    assert isinstance(kept, np.ndarray) and kept.shape == (1, encoder.dimension)
    assert [len(call) for call in encoder.calls] == [1, 1]  # "kept" alone: nothing else ran
    batcher.close()

    async def after_close() -> None:
        await batcher.embed(["late"])

    with pytest.raises(RuntimeError, match="shut down"):
        asyncio.run(after_close())


def test_warm_up_runs_the_largest_batch_the_encoder_forms(tiny_onnx_embedder: Path) -> None:
    model = OnnxEmbedder(tiny_onnx_embedder, threads=1, batch_size=4)
    assert model.warm_up() == (4, model.pooling.max_length)  # full-length texts, a full batch
    assert model.embed(["after"]).shape == (1, model.dimension)


@pytest.fixture(scope="module")
def tiny_genai(tiny_generator: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Llama built by onnxruntime-genai's model builder (fp32)."""
    from slipway.onnx.build import BuildConfig, build_genai

    config = BuildConfig(task="text-generation-with-past", runtime="genai")
    return build_genai(
        tiny_generator, tmp_path_factory.mktemp("tiny-genai") / "gen", config, "fp32"
    )


def test_concurrent_requests_decode_together_with_sequential_output(tiny_genai: Path) -> None:
    sequential = GenAIDecoder(tiny_genai, threads=1)
    engine = GenAIEngineDecoder(tiny_genai, threads=1)
    prompts = [[1, 5 + i, 9, 17 + 2 * i, 4] for i in range(6)]
    lengths = [12, 3, 20, 7, 16, 1]
    expected = [
        list(sequential.stream_ids(p, Sampling(max_new_tokens=n, ignore_eos=True)))
        for p, n in zip(prompts, lengths, strict=True)
    ]
    with ThreadPoolExecutor(len(prompts)) as pool:
        got = list(
            pool.map(
                lambda pn: list(
                    engine.stream_ids(pn[0], Sampling(max_new_tokens=pn[1], ignore_eos=True))
                ),
                zip(prompts, lengths, strict=True),
            )
        )
    assert got == expected
    assert [len(g) for g in got] == lengths


def test_a_reader_that_leaves_frees_the_engine(tiny_genai: Path) -> None:
    engine = GenAIEngineDecoder(tiny_genai, threads=1)
    sequential = GenAIDecoder(tiny_genai, threads=1)
    abandoned = engine.stream_ids([1, 7, 7, 7], Sampling(max_new_tokens=400, ignore_eos=True))
    next(abandoned)
    abandoned.close()  # the client went away after one token
    prompt, sampling = [1, 3, 5, 8], Sampling(max_new_tokens=10, ignore_eos=True)
    assert list(engine.stream_ids(prompt, sampling)) == list(
        sequential.stream_ids(prompt, sampling)
    )
    assert engine._thread.is_alive()


def test_an_idle_engine_hands_its_free_heap_back_once_per_period(
    tiny_genai: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    released: list[float] = []
    monkeypatch.setattr(
        "slipway.generation.release_free_heap", lambda: released.append(time.monotonic()) or True
    )
    engine = GenAIEngineDecoder(tiny_genai, threads=1, trim_every_s=0.2)
    assert engine.trims == 0  # nothing decoded yet: nothing to give back
    sampling = Sampling(max_new_tokens=4, ignore_eos=True)
    for _ in range(3):  # requests in quick succession: a release at most every 0.2 s
        assert len(list(engine.stream_ids([1, 4, 6], sampling))) == 4
    time.sleep(0.6)
    after_burst = engine.trims
    assert after_burst == len(released) and 1 <= after_burst <= 2
    time.sleep(0.5)  # idle, nothing decoded since: nothing more to release
    assert engine.trims == after_burst
    assert len(list(engine.stream_ids([2, 4], sampling))) == 4
    deadline = time.monotonic() + 10
    while engine.trims == after_burst and time.monotonic() < deadline:
        time.sleep(0.02)
    assert engine.trims == after_burst + 1 == len(released)
    assert all(b - a >= 0.2 for a, b in itertools.pairwise(released))


def test_release_free_heap_runs_here() -> None:
    from slipway.memory import release_free_heap

    assert release_free_heap() is True  # glibc (Linux): malloc_trim


class StopsOnce:
    """The real engine, except that its third step fails as 0.15's engine sometimes does."""

    def __init__(self, engine: object) -> None:
        self.engine = engine
        self.steps = 0

    def __getattr__(self, name: str) -> object:
        return getattr(self.engine, name)

    def step(self) -> None:
        self.steps += 1
        if self.steps == 3:
            raise RuntimeError("Expected at least one request to be ready, but none were found.")
        self.engine.step()  # type: ignore[attr-defined]


def test_requests_resume_on_a_new_engine_when_the_engine_stops(tiny_genai: Path) -> None:
    sequential = GenAIDecoder(tiny_genai, threads=1)
    decoder = GenAIEngineDecoder(tiny_genai, threads=1)
    decoder.engine = StopsOnce(decoder.engine)
    prompts = [[1, 4, 9, 16], [1, 8, 27], [1, 2, 3, 5, 8, 13]]
    sampling = Sampling(max_new_tokens=10, ignore_eos=True)
    expected = [list(sequential.stream_ids(p, sampling)) for p in prompts]
    with ThreadPoolExecutor(len(prompts)) as pool:
        got = list(pool.map(lambda p: list(decoder.stream_ids(p, sampling)), prompts))
    assert got == expected
    assert decoder.restarts == 1


class Gated:
    """The real engine, whose steps wait until the gate opens."""

    def __init__(self, engine: object) -> None:
        self.engine = engine
        self.gate = threading.Event()

    def __getattr__(self, name: str) -> object:
        return getattr(self.engine, name)

    def step(self) -> None:
        self.gate.wait()
        self.engine.step()  # type: ignore[attr-defined]


def test_a_full_decoder_refuses_at_once_and_waiting_requests_start_in_turn(
    tiny_genai: Path,
) -> None:
    sequential = GenAIDecoder(tiny_genai, threads=1)
    decoder = GenAIEngineDecoder(tiny_genai, threads=1, max_batch=2, max_waiting=1)
    decoder.engine = gated = Gated(decoder.engine)
    sampling = Sampling(max_new_tokens=6, ignore_eos=True)
    prompts = [[1, 6, 6], [1, 7, 6], [1, 3, 5, 8]]

    with ThreadPoolExecutor(3) as pool:
        try:
            first = pool.submit(lambda: list(decoder.stream_ids(prompts[0], sampling)))
            # in the engine, its step held at the gate
            wait_until(lambda: decoder._running == 1, "the first request", interval=0.005)
            rest = [
                pool.submit(lambda p=p: list(decoder.stream_ids(p, sampling))) for p in prompts[1:]
            ]
            # one place in the batch, one in the queue
            wait_until(lambda: len(decoder._added) == 2, "two waiting", interval=0.005)
            with pytest.raises(DecoderBusy, match="SLIPWAY_GEN_MAX_WAITING"):
                next(decoder.stream_ids([1, 2], sampling))
            assert decoder.refused == 1
        finally:
            gated.gate.set()
        got = [f.result(timeout=60) for f in [first, *rest]]
    assert got == [list(sequential.stream_ids(p, sampling)) for p in prompts]
    assert list(decoder.stream_ids([1, 2], sampling)) == list(
        sequential.stream_ids([1, 2], sampling)
    )


def test_a_request_without_a_place_within_max_queue_s_is_refused(tiny_genai: Path) -> None:
    sequential = GenAIDecoder(tiny_genai, threads=1)
    decoder = GenAIEngineDecoder(tiny_genai, threads=1, max_batch=1, max_waiting=4, max_queue_s=0.2)
    decoder.engine = gated = Gated(decoder.engine)
    sampling = Sampling(max_new_tokens=6, ignore_eos=True)
    with ThreadPoolExecutor(2) as pool:
        try:
            first = pool.submit(lambda: list(decoder.stream_ids([1, 6, 6], sampling)))
            wait_until(lambda: decoder._running == 1, "the first request", interval=0.005)
            waiting = decoder.stream_ids([1, 7, 6], sampling)
            late = pool.submit(lambda: next(waiting))
            wait_until(lambda: len(decoder._added) == 1, "the second waiting", interval=0.005)
            time.sleep(0.3)  # past max_queue_s while the running request's step is held
        finally:
            gated.gate.set()
        with pytest.raises(DecoderBusy, match="SLIPWAY_GEN_MAX_QUEUE_S"):
            late.result(timeout=60)
        assert first.result(timeout=60) == list(sequential.stream_ids([1, 6, 6], sampling))
    assert decoder.expired == 1
    # a request that finds a place in time is served as before
    assert list(decoder.stream_ids([1, 7, 6], sampling)) == list(
        sequential.stream_ids([1, 7, 6], sampling)
    )
    with pytest.raises(ValueError, match="max_queue_s"):
        GenAIEngineDecoder(tiny_genai, threads=1, max_queue_s=0)
