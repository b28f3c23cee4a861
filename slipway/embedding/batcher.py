"""Continuous batching for an encoder, as Text Embeddings Inference does it.

One thread owns the encoder. Callers queue their texts and wait; the moment the encoder is
free, it takes everything queued (up to a token budget) as its next call. There is no timer:
a lone request runs at once, and under load each call carries what arrived during the last
one. Requests whose caller left (deadline, disconnect) are dropped before they are encoded.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from tokenizers import Encoding


class TokenEncoder(Protocol):
    """An encoder that tokenizes and embeds in two steps (``OnnxEmbedder``)."""

    dimension: int

    def encode(self, texts: Sequence[str]) -> list[Encoding]: ...

    def embed_encodings(self, encodings: Sequence[Encoding]) -> np.ndarray: ...


@dataclass(eq=False)
class _Item:
    texts: list[str]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[np.ndarray]
    encodings: list[Encoding] = field(default_factory=list)

    @property
    def tokens(self) -> int:
        return sum(len(e.ids) for e in self.encodings)

    def settle(self, result: np.ndarray | BaseException) -> None:
        def apply() -> None:
            if self.future.done():  # the caller left meanwhile
                return
            if isinstance(result, BaseException):
                self.future.set_exception(result)
            else:
                self.future.set_result(result)

        with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits any more
            self.loop.call_soon_threadsafe(apply)


class ContinuousBatcher:
    """``await embed(texts)`` for many concurrent callers, one encoder call at a time, each
    formed from whatever is queued when the encoder becomes free: at most ``max_batch_tokens``
    tokens (a request larger than that runs alone). ``on_batch(texts, tokens)`` is called for
    every encoder call (for metrics)."""

    def __init__(
        self,
        encoder: TokenEncoder,
        max_batch_tokens: int = 8192,
        on_batch: Callable[[int, int], None] | None = None,
        name: str = "slipway-encoder",
    ) -> None:
        if max_batch_tokens < 1:
            raise ValueError("max_batch_tokens must be at least 1")
        self.encoder = encoder
        self.dimension = encoder.dimension
        self.max_batch_tokens = max_batch_tokens
        self.on_batch = on_batch
        self._pending: deque[_Item] = deque()
        self._ready = threading.Condition()
        self._closed = False
        self.calls = 0
        self.texts = 0
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    async def embed(self, texts: list[str]) -> np.ndarray:
        """Unit vectors for ``texts``, computed together with whatever else is queued.
        Cancelling the caller (a deadline, a client gone) drops its texts if they have not
        reached the encoder yet."""
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        loop = asyncio.get_running_loop()
        item = _Item(list(texts), loop, loop.create_future())
        with self._ready:
            if self._closed:
                raise RuntimeError("The encoder is shut down.")
            self._pending.append(item)
            self._ready.notify()
        return await item.future

    def close(self, timeout: float = 5.0) -> None:
        """Stop taking requests; what is queued fails; waits for the running call."""
        with self._ready:
            self._closed = True
            left, self._pending = list(self._pending), deque()
            self._ready.notify_all()
        for item in left:
            item.settle(RuntimeError("The encoder is shut down."))
        self._thread.join(timeout)

    @property
    def queued(self) -> int:
        """Requests waiting for the encoder."""
        return len(self._pending)

    def _take(self) -> list[_Item] | None:
        """The next batch: queued requests, oldest first, within the token budget."""
        with self._ready:
            while not self._pending and not self._closed:
                self._ready.wait()
            if self._closed:
                return None
            waiting, self._pending = list(self._pending), deque()
        live: list[_Item] = []
        for item in waiting:
            if item.future.done():  # its caller left before the encoder got to it
                continue
            if not item.encodings:
                try:
                    item.encodings = self.encoder.encode(item.texts)
                except Exception as exc:  # this request's texts only
                    item.settle(exc)
                    continue
            live.append(item)
        batch: list[_Item] = []
        tokens = 0
        for n, item in enumerate(live):
            if batch and tokens + item.tokens > self.max_batch_tokens:
                with self._ready:  # the rest goes first next time, in order
                    self._pending.extendleft(reversed(live[n:]))
                break
            batch.append(item)
            tokens += item.tokens
        return batch

    def _serve(self) -> None:
        while (batch := self._take()) is not None:
            if batch:
                self._run(batch)

    def _run(self, batch: list[_Item]) -> None:
        encodings = [e for item in batch for e in item.encodings]
        try:
            vectors = self.encoder.embed_encodings(encodings)
        except BaseException as exc:
            for item in batch:
                item.settle(exc)
            return
        self.calls += 1
        self.texts += len(encodings)
        if self.on_batch is not None:
            self.on_batch(len(encodings), sum(len(e.ids) for e in encodings))
        start = 0
        for item in batch:
            item.settle(vectors[start : start + len(item.texts)])
            start += len(item.texts)
