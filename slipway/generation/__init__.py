"""Text generation from an ONNX decoder with a KV cache.

Two runtimes sit behind one protocol, chosen by the bundle's manifest:

- ``genai``: onnxruntime-genai; its model builder exports Llama-family models with fused
  attention and int8/int4 weights, and its generation loop runs in C++ (the default: it is
  what ``bench/generate.py`` measured fastest).
- ``optimum``: optimum's ``text-generation-with-past`` export run by ``ORTModelForCausalLM``
  (any architecture optimum exports; the loop runs in Python).
"""

from __future__ import annotations

import json
import logging
import math
import os
import queue
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from slipway.generation.constraints import Guidance
from slipway.memory import release_free_heap

logger = logging.getLogger(__name__)


class GuidanceError(ValueError):
    """A schema or grammar the decoder cannot be constrained to (the caller's mistake)."""


class DecoderBusy(RuntimeError):
    """The decoder's queue is full: the request is refused at once (a 503 to retry), not left
    to wait behind work that would outlast any client's deadline."""


@dataclass(frozen=True)
class Sampling:
    """Decoding options; ``temperature == 0`` means greedy."""

    max_new_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    ignore_eos: bool = False
    guidance: Guidance | None = None  # constrained decoding (the genai runtime only)

    @property
    def greedy(self) -> bool:
        """Whether decoding is deterministic."""
        return self.temperature <= 0.0


@dataclass
class Generation:
    """A finished generation: the text, its token ids and why it stopped."""

    text: str
    token_ids: list[int] = field(default_factory=list)
    prompt_tokens: int = 0
    finish_reason: str = "length"


class TokenGenerator(Protocol):
    """A decoder that yields new token ids for a prompt and scores next tokens."""

    provider: str

    def stream_ids(self, prompt_ids: Sequence[int], sampling: Sampling) -> Iterator[int]: ...

    def next_token_logits(self, ids: Sequence[int], start: int) -> np.ndarray: ...


class GenAIDecoder:
    """onnxruntime-genai model: C++ generation loop with its own KV cache."""

    guided = True  # llguidance: JSON schemas and grammars (Sampling.guidance)

    def __init__(self, model_dir: Path, threads: int = 0, providers: list[str] | None = None):
        import onnxruntime_genai as og

        self._og = og
        config = og.Config(str(model_dir))
        threads = threads or len(os.sched_getaffinity(0))
        use_cuda = providers is not None and "CUDAExecutionProvider" in providers
        session: dict[str, Any] = {"intra_op_num_threads": threads, "inter_op_num_threads": 1}
        if not use_cuda:
            # onnxruntime's CPU arena keeps the peak of every prefill for good (about 200 MB
            # after eight concurrent 1,500-token prompts); without it the same decoding runs
            # as fast (measured: 12.6 s against 12.57 s) and the memory can be handed back
            session["enable_cpu_mem_arena"] = False
        config.overlay(json.dumps({"model": {"decoder": {"session_options": session}}}))
        config.clear_providers()
        if use_cuda:
            config.append_provider("cuda")
        self.provider = "CUDAExecutionProvider" if use_cuda else "CPUExecutionProvider"
        self.model = og.Model(config)
        config_json = json.loads((model_dir / "genai_config.json").read_text())["model"]
        self.context_length = int(config_json["context_length"])
        eos = config_json.get("eos_token_id")
        self.eos_id: int | None = int(eos[0] if isinstance(eos, list) else eos) if eos else None

    def _params(self, sampling: Sampling, max_length: int) -> Any:
        params = self._og.GeneratorParams(self.model)
        params.set_search_options(**self._search_options(sampling, max_length))
        return params

    def _generator(self, sampling: Sampling, max_length: int) -> Any:
        params = self._params(sampling, max_length)
        if sampling.guidance is None:
            return self._og.Generator(self.model, params)
        try:
            params.set_guidance(sampling.guidance.kind, sampling.guidance.data)
            return self._og.Generator(self.model, params)
        except Exception as exc:  # llguidance rejected the schema or grammar
            raise GuidanceError(f"The output constraint cannot be applied: {exc}") from exc

    def _search_options(self, sampling: Sampling, max_length: int) -> dict[str, Any]:
        options: dict[str, Any] = {"max_length": min(max_length, self.context_length)}
        if sampling.ignore_eos:
            options["min_length"] = options["max_length"]
        if sampling.greedy:
            options["do_sample"] = False
        else:
            options.update(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p)
            if sampling.seed is not None:
                options["random_seed"] = sampling.seed
        return options

    def stream_ids(self, prompt_ids: Sequence[int], sampling: Sampling) -> Iterator[int]:
        """Yield new token ids until EOS or ``max_new_tokens``."""
        gen = self._generator(sampling, len(prompt_ids) + sampling.max_new_tokens)
        gen.append_tokens(list(prompt_ids))
        produced = 0
        while not gen.is_done() and produced < sampling.max_new_tokens:
            gen.generate_next_token()
            token = int(gen.get_next_tokens()[0])
            produced += 1
            yield token

    def next_token_logits(self, ids: Sequence[int], start: int) -> np.ndarray:
        """Logits predicting ``ids[start:]`` (teacher-forced), of shape
        ``(len(ids) - start, vocab)``."""
        gen = self._generator(Sampling(), len(ids) + 1)
        gen.append_tokens(list(ids[:start]))
        rows = [np.array(gen.get_logits())[0, -1]]
        for token in ids[start:-1]:
            gen.append_tokens([int(token)])
            rows.append(np.array(gen.get_logits())[0, -1])
        return np.stack(rows).astype(np.float32)


@dataclass(frozen=True)
class Admission:
    """How many requests a concurrent decoder runs together, how many more may wait, and for
    how long (seconds) one may wait for a place before it is refused (Triton's queue policy,
    ``default_timeout_microseconds`` with ``REJECT``)."""

    max_batch: int = 8
    max_waiting: int = 8
    max_queue_s: float = 5.0


@dataclass(eq=False)
class _Decoding:
    """One request of the engine: what it asked for and what it has produced so far."""

    prompt_ids: list[int]
    sampling: Sampling
    tokens: queue.SimpleQueue[int | BaseException | None]
    request: Any = None
    produced: list[int] = field(default_factory=list)
    left: bool = False  # its reader stopped reading
    queued: float = field(default_factory=time.monotonic)


class GenAIEngineDecoder(GenAIDecoder):
    """onnxruntime-genai's ``Engine``: concurrent requests decoded together. One thread steps
    the engine; each step decodes a token of every request in its batch. Greedy output matches
    :class:`GenAIDecoder` token for token.

    Two limits of onnxruntime-genai 0.15's engine on CPU (a static-cache engine) are handled
    here: ``remove_request`` does not stop a request, so one whose reader left is dropped by
    replacing the engine as soon as nothing else runs (creating one costs microseconds); and
    the engine can stop scheduling ("Expected at least one request to be ready"), in which
    case a fresh engine resumes every unfinished request from the tokens it has produced.

    Admission: at most ``max_batch`` requests decode together (each step's cost, and so every
    running request's time per token, grows with the batch); up to ``max_waiting`` more wait
    in arrival order, and a request beyond those is refused at once with
    :class:`DecoderBusy`. A request that waited ``max_queue_s`` without a place is refused
    then (also :class:`DecoderBusy`, before its first token): the count of waiting requests
    alone does not bound the wait, which is as long as the running requests' work, and that
    depends on the prompts and the CPU. A waiting request whose reader left is dropped
    unstarted.

    Memory: once the engine falls idle after decoding, the C heap's free pages go back to the
    OS (:func:`slipway.memory.release_free_heap`, at most every ``trim_every_s``), so a burst
    of long prompts does not leave the process at its high-water mark."""

    def __init__(
        self,
        model_dir: Path,
        threads: int = 0,
        providers: list[str] | None = None,
        max_batch: int = 8,
        max_waiting: int = 8,
        trim_every_s: float = 10.0,
        max_queue_s: float = 5.0,
    ):
        super().__init__(model_dir, threads, providers)
        if max_batch < 1 or max_waiting < 0 or max_queue_s <= 0:
            raise ValueError("max_batch must be >= 1, max_waiting >= 0 and max_queue_s > 0")
        self.max_batch, self.max_waiting, self.max_queue_s = max_batch, max_waiting, max_queue_s
        self.engine = self._og.Engine(self.model)
        self.restarts = 0
        self.refused = 0
        self.expired = 0  # refused after waiting max_queue_s
        self._changes = threading.Condition()
        self._added: list[_Decoding] = []  # waiting to start, oldest first
        self._running = 0  # requests in the engine (read under _changes)
        self.trim_every_s = trim_every_s
        self.trims = 0
        self._trimmed = -math.inf  # time.monotonic() of the last release
        self._untrimmed = False  # decoded since then
        self._thread = threading.Thread(target=self._serve, name="slipway-decoder", daemon=True)
        self._thread.start()

    def _submit(self, decoding: _Decoding) -> None:
        """Add a request to the current engine, resuming after what it has produced."""
        s = decoding.sampling
        request = self._og.Request(self._params(s, len(decoding.prompt_ids) + s.max_new_tokens))
        request.add_tokens(decoding.prompt_ids + decoding.produced)
        self.engine.add_request(request)
        decoding.request = request

    def stream_ids(self, prompt_ids: Sequence[int], sampling: Sampling) -> Iterator[int]:
        """Yield new token ids until EOS or ``max_new_tokens``, decoded together with every
        other running request (a guided request alone: the 0.15 engine cannot guide)."""
        if sampling.guidance is not None:
            yield from super().stream_ids(prompt_ids, sampling)
            return
        decoding = _Decoding(list(prompt_ids), sampling, queue.SimpleQueue())
        with self._changes:
            waiting = sum(not d.left for d in self._added)
            if self._running + waiting >= self.max_batch + self.max_waiting:
                self.refused += 1
                raise DecoderBusy(
                    f"The generator is busy: {self._running} generations running and "
                    f"{waiting} waiting (SLIPWAY_GEN_MAX_BATCH, SLIPWAY_GEN_MAX_WAITING)."
                )
            self._added.append(decoding)
            self._changes.notify()
        produced = 0
        try:
            while produced < sampling.max_new_tokens:
                token = decoding.tokens.get()
                if token is None:  # the engine ends a request at EOS without handing it over
                    if self.eos_id is not None and not sampling.ignore_eos:
                        yield self.eos_id
                    return
                if isinstance(token, BaseException):
                    raise token
                produced += 1
                yield token
        finally:
            decoding.left = True
            with self._changes:
                self._changes.notify()

    def _serve(self) -> None:
        running: list[_Decoding] = []
        abandoned = 0  # requests whose reader left before they finished, still in the engine
        failed_steps = 0  # steps failed since the last one that worked
        while True:
            with self._changes:
                self._running = len(running)
                while not running and not self._added:
                    if not self._untrimmed:
                        self._changes.wait()
                        continue
                    due = self._trimmed + self.trim_every_s - time.monotonic()
                    if due > 0:
                        self._changes.wait(due)
                        continue
                    release_free_heap()  # idle after decoding: hand the peak back
                    self.trims += 1
                    self._trimmed, self._untrimmed = time.monotonic(), False
                self._added = [d for d in self._added if not d.left]  # readers gone: unstarted
                room = max(self.max_batch - len(running), 0)
                added, self._added = self._added[:room], self._added[room:]
                self._expire_waiting()  # the ones still without a place
                self._running = len(running) + len(added)
            for decoding in added:
                try:
                    self._submit(decoding)
                    running.append(decoding)
                except Exception as exc:  # a bad request fails alone
                    decoding.tokens.put(exc)
            for decoding in [d for d in running if d.left]:
                running.remove(decoding)
                abandoned += 1
            if not running:
                if abandoned:
                    self.engine = self._og.Engine(self.model)
                    abandoned = 0
                continue
            self._hand_over(running)  # a request can turn done between steps
            if not running:
                continue
            self._untrimmed = True
            try:
                self.engine.step()
            except Exception as exc:
                self._hand_over(running)
                if running and failed_steps == 0:
                    self._restart(running, exc)
                    abandoned = 0
                elif running:  # a fresh engine failed at once too: give up on these
                    logger.error("The decoder engine failed again; %d requests fail", len(running))
                    for decoding in running:
                        decoding.tokens.put(exc)
                    running.clear()
                    self.engine = self._og.Engine(self.model)
                failed_steps += 1
                continue
            failed_steps = 0
            self._hand_over(running)

    def _expire_waiting(self) -> None:
        """Refuse the waiting requests that have waited ``max_queue_s`` (under ``_changes``)."""
        deadline = time.monotonic() - self.max_queue_s
        for decoding in [d for d in self._added if d.queued <= deadline]:
            self._added.remove(decoding)
            self.expired += 1
            decoding.tokens.put(
                DecoderBusy(
                    f"The generator is busy: no place in the decoding batch within "
                    f"{self.max_queue_s:g} s (SLIPWAY_GEN_MAX_BATCH, SLIPWAY_GEN_MAX_QUEUE_S)."
                )
            )

    def _hand_over(self, running: list[_Decoding]) -> None:
        """Give every request its new tokens; end the ones that are done."""
        for decoding in list(running):
            request = decoding.request
            while request.has_unseen_tokens():
                token = int(request.get_unseen_token())
                decoding.produced.append(token)
                decoding.tokens.put(token)
            if request.is_done():
                decoding.tokens.put(None)
                running.remove(decoding)

    def _restart(self, running: list[_Decoding], exc: Exception) -> None:
        """A fresh engine resumes the unfinished requests; those it cannot take fail."""
        self.restarts += 1
        logger.warning(
            "The decoder engine stopped (%s); resuming %d requests on a new one", exc, len(running)
        )
        self.engine = self._og.Engine(self.model)
        for decoding in list(running):
            try:
                self._submit(decoding)
            except Exception as failure:
                decoding.tokens.put(failure)
                running.remove(decoding)


class OptimumDecoder:
    """optimum ``ORTModelForCausalLM`` over a ``text-generation-with-past`` export."""

    guided = False

    def __init__(self, model_dir: Path, threads: int = 0, providers: list[str] | None = None):
        import torch
        from optimum.onnxruntime import ORTModelForCausalLM

        from slipway.onnx.session import default_providers, session_options

        self._torch = torch
        chosen = default_providers(providers)
        self.model = ORTModelForCausalLM.from_pretrained(
            model_dir,
            session_options=session_options(threads),
            provider=chosen[0],
            use_cache=True,
            local_files_only=True,
        )
        self.provider = chosen[0]

    def stream_ids(self, prompt_ids: Sequence[int], sampling: Sampling) -> Iterator[int]:
        """Yield new token ids (generated in one call, then streamed)."""
        if sampling.guidance is not None:
            raise ValueError(
                "Constrained decoding (response_format, tools) needs the genai runtime "
                "(build.generator.runtime: genai)."
            )
        torch = self._torch
        inputs = torch.tensor([list(prompt_ids)])
        kwargs: dict[str, object] = {"max_new_tokens": sampling.max_new_tokens}
        if sampling.ignore_eos:
            kwargs["min_new_tokens"] = sampling.max_new_tokens
        if sampling.greedy:
            kwargs["do_sample"] = False
        else:
            if sampling.seed is not None:
                torch.manual_seed(sampling.seed)
            kwargs.update(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p)
        with torch.inference_mode():
            out = self.model.generate(inputs, attention_mask=torch.ones_like(inputs), **kwargs)
        yield from (int(t) for t in out[0, len(prompt_ids) :])

    def next_token_logits(self, ids: Sequence[int], start: int) -> np.ndarray:
        """Logits predicting ``ids[start:]`` from one teacher-forced forward pass."""
        torch = self._torch
        inputs = torch.tensor([list(ids)])
        with torch.inference_mode():
            logits = self.model(input_ids=inputs, attention_mask=torch.ones_like(inputs)).logits[0]
        return logits[start - 1 : len(ids) - 1].float().numpy()


class TextGenerator:
    """Chat-templated generation with stop strings over any :class:`TokenGenerator`."""

    def __init__(self, decoder: TokenGenerator, tokenizer: PreTrainedTokenizerBase):
        self.decoder = decoder
        self.tokenizer = tokenizer
        self.provider = decoder.provider
        self.guided = bool(getattr(decoder, "guided", False))
        self.eos_ids = _eos_ids(tokenizer)

    def prompt_ids(self, prompt: str, chat: bool = True) -> list[int]:
        """Token ids of a prompt, wrapped in the chat template when the model has one."""
        if chat and getattr(self.tokenizer, "chat_template", None):
            ids = self.tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True
            )
            return list(ids)
        return list(self.tokenizer(prompt)["input_ids"])

    def chat_ids(self, messages: Sequence[Mapping[str, str]]) -> list[int]:
        """Token ids of a conversation (``role``/``content`` dicts) in the chat template; plain
        ``role: content`` lines for a model without one."""
        if getattr(self.tokenizer, "chat_template", None):
            return list(
                self.tokenizer.apply_chat_template(
                    [dict(m) for m in messages], add_generation_prompt=True, tokenize=True
                )
            )
        text = "\n".join(f"{m['role']}: {m['content']}" for m in messages) + "\nassistant:"
        return list(self.tokenizer(text)["input_ids"])

    def stream(
        self, prompt_ids: Sequence[int], sampling: Sampling, stats: Generation | None = None
    ) -> Iterator[str]:
        """Yield text pieces as they are decoded; stops at EOS or a stop string. ``stats``, when
        given, receives the token ids and the finish reason."""
        produced: list[int] = stats.token_ids if stats is not None else []
        emitted = ""
        for token in self.decoder.stream_ids(prompt_ids, sampling):
            if token in self.eos_ids and not sampling.ignore_eos:
                if stats is not None:
                    stats.finish_reason = "stop"
                break
            produced.append(token)
            text = self.tokenizer.decode(produced, skip_special_tokens=True)
            cut = _stop_index(text, sampling.stop)
            if cut is not None:
                if stats is not None:
                    stats.finish_reason = "stop"
                if cut > len(emitted):
                    yield text[len(emitted) : cut]
                return
            if text.endswith("\ufffd"):  # an incomplete UTF-8 sequence: wait for more tokens
                continue
            hold = _partial_stop_len(text, sampling.stop)
            safe = len(text) - hold
            if safe > len(emitted):
                yield text[len(emitted) : safe]
                emitted = text[:safe]


def _eos_ids(tokenizer: PreTrainedTokenizerBase) -> frozenset[int]:
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    for token in ("<|im_end|>", "<|endoftext|>", "</s>", "<|eot_id|>"):
        tid = tokenizer.convert_tokens_to_ids(token)
        if isinstance(tid, int) and tid != tokenizer.unk_token_id:
            ids.add(tid)
    return frozenset(ids)


def _stop_index(text: str, stops: Sequence[str]) -> int | None:
    found = [text.find(s) for s in stops if s and s in text]
    return min(found) if found else None


def _partial_stop_len(text: str, stops: Sequence[str]) -> int:
    """Length of the longest suffix of ``text`` that starts some stop string."""
    best = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), 0, -1):
            if text.endswith(stop[:n]):
                best = max(best, n)
                break
    return best


def load_generator(
    model_dir: Path,
    runtime: str,
    threads: int = 0,
    providers: list[str] | None = None,
    concurrent: Admission | None = None,
) -> TextGenerator:
    """Open a generator directory with its runtime (``genai`` or ``optimum``). ``concurrent``:
    decode concurrent requests together, admitted as it says (onnxruntime-genai's
    continuous-batching engine; the optimum runtime decodes one request at a time either way,
    its callers queue in the service's worker threads)."""
    decoder: TokenGenerator
    if runtime == "genai" and concurrent is not None:
        decoder = GenAIEngineDecoder(
            model_dir,
            threads,
            providers,
            concurrent.max_batch,
            concurrent.max_waiting,
            max_queue_s=concurrent.max_queue_s,
        )
    elif runtime == "genai":
        decoder = GenAIDecoder(model_dir, threads, providers)
    elif runtime == "optimum":
        decoder = OptimumDecoder(model_dir, threads, providers)
    else:
        raise ValueError(f"Unknown generator runtime {runtime!r}; use 'genai' or 'optimum'.")
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    logger.info("Generator %s loaded with %s on %s", model_dir.name, runtime, decoder.provider)
    return TextGenerator(decoder, tokenizer)


@dataclass(frozen=True)
class Request:
    """One generation request: a prompt (chat-templated unless ``chat`` is false) or a
    conversation, and how to decode it (``slipway.wire.GenerationRequest`` carries it between
    services)."""

    sampling: Sampling
    prompt: str | None = None
    messages: tuple[tuple[str, str], ...] = ()
    chat: bool = True


def request_ids(generator: TextGenerator, request: Request) -> list[int]:
    """The prompt token ids of a request."""
    if request.messages:
        return generator.chat_ids([{"role": r, "content": c} for r, c in request.messages])
    if request.prompt is None:
        raise ValueError("A generation request needs a prompt or messages.")
    return generator.prompt_ids(request.prompt, request.chat)


def generation_events(generator: TextGenerator, request: Request) -> Iterator[dict[str, Any]]:
    """``{"text": piece}`` events as text is decoded, then one
    ``{"finish_reason", "prompt_tokens", "completion_tokens"}`` event."""
    ids = request_ids(generator, request)
    stats = Generation(text="", prompt_tokens=len(ids))
    for piece in generator.stream(ids, request.sampling, stats):
        yield {"text": piece}
    yield {
        "finish_reason": stats.finish_reason,
        "prompt_tokens": stats.prompt_tokens,
        "completion_tokens": len(stats.token_ids),
    }


def complete(generator: TextGenerator, request: Request) -> dict[str, Any]:
    """A whole generation: ``text``, ``finish_reason``, ``prompt_tokens``, ``completion_tokens``."""
    pieces: list[str] = []
    final: dict[str, Any] = {}
    for event in generation_events(generator, request):
        if "text" in event:
            pieces.append(event["text"])
        else:
            final = event
    return {"text": "".join(pieces), **final}


def context_length(model_dir: Path) -> int | None:
    """The generator's context window, from ``genai_config.json`` or ``config.json``."""
    genai = model_dir / "genai_config.json"
    if genai.is_file():
        return int(json.loads(genai.read_text())["model"]["context_length"])
    config = model_dir / "config.json"
    if config.is_file():
        value = json.loads(config.read_text()).get("max_position_embeddings")
        return int(value) if value else None
    return None
