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
import os
import queue
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from transformers import AutoTokenizer, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Sampling:
    """Decoding options; ``temperature == 0`` means greedy."""

    max_new_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    ignore_eos: bool = False

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

    def __init__(self, model_dir: Path, threads: int = 0, providers: list[str] | None = None):
        import onnxruntime_genai as og

        self._og = og
        config = og.Config(str(model_dir))
        threads = threads or len(os.sched_getaffinity(0))
        config.overlay(
            json.dumps(
                {
                    "model": {
                        "decoder": {
                            "session_options": {
                                "intra_op_num_threads": threads,
                                "inter_op_num_threads": 1,
                            }
                        }
                    }
                }
            )
        )
        config.clear_providers()
        use_cuda = providers is not None and "CUDAExecutionProvider" in providers
        if use_cuda:
            config.append_provider("cuda")
        self.provider = "CUDAExecutionProvider" if use_cuda else "CPUExecutionProvider"
        self.model = og.Model(config)
        self.context_length = int(
            json.loads((model_dir / "genai_config.json").read_text())["model"]["context_length"]
        )

    def _generator(self, sampling: Sampling, max_length: int) -> Any:
        params = self._og.GeneratorParams(self.model)
        params.set_search_options(**self._search_options(sampling, max_length))
        return self._og.Generator(self.model, params)

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


class GenAIEngineDecoder(GenAIDecoder):
    """onnxruntime-genai's ``Engine``: continuous batching. One thread steps the engine; each
    step decodes one token of every running request, and a new request joins at the next step
    instead of waiting for the others to finish. Greedy output matches :class:`GenAIDecoder`
    token for token. A request whose reader stops is dropped: onnxruntime-genai 0.15's
    ``remove_request`` leaves it decoding beside the others, so the engine is replaced as soon
    as no other request runs (creating one costs microseconds)."""

    def __init__(self, model_dir: Path, threads: int = 0, providers: list[str] | None = None):
        super().__init__(model_dir, threads, providers)
        self.engine = self._og.Engine(self.model)
        self._changes = threading.Condition()
        self._added: list[tuple[Any, queue.SimpleQueue[int | BaseException | None]]] = []
        self._removed: list[Any] = []
        self._thread = threading.Thread(target=self._serve, name="slipway-decoder", daemon=True)
        self._thread.start()

    def _params(self, sampling: Sampling, max_length: int) -> Any:
        params = self._og.GeneratorParams(self.model)
        params.set_search_options(**self._search_options(sampling, max_length))
        return params

    def stream_ids(self, prompt_ids: Sequence[int], sampling: Sampling) -> Iterator[int]:
        """Yield new token ids until EOS or ``max_new_tokens``, decoded together with every
        other running request."""
        request = self._og.Request(
            self._params(sampling, len(prompt_ids) + sampling.max_new_tokens)
        )
        request.add_tokens(list(prompt_ids))
        tokens: queue.SimpleQueue[int | BaseException | None] = queue.SimpleQueue()
        with self._changes:
            self._added.append((request, tokens))
            self._changes.notify()
        produced = 0
        try:
            while produced < sampling.max_new_tokens:
                token = tokens.get()
                if token is None:
                    return
                if isinstance(token, BaseException):
                    raise token
                produced += 1
                yield token
        finally:
            with self._changes:
                self._removed.append(request)
                self._changes.notify()

    def _serve(self) -> None:
        running: dict[Any, queue.SimpleQueue[int | BaseException | None]] = {}
        abandoned = 0  # requests whose reader left before they finished
        while True:
            with self._changes:
                while not running and not self._added:
                    self._changes.wait()
                added, self._added = self._added, []
                removed, self._removed = self._removed, []
            for request, tokens in added:
                try:
                    self.engine.add_request(request)
                    running[request] = tokens
                except Exception as exc:  # a bad request fails alone
                    tokens.put(exc)
            for request in removed:
                if running.pop(request, None) is not None:
                    self.engine.remove_request(request)
                    abandoned += 1
            if not running:
                if abandoned:  # remove_request does not stop a request in 0.15: a new
                    self.engine = self._og.Engine(self.model)  # engine drops it (free)
                    abandoned = 0
                continue
            try:
                self.engine.step()
            except Exception as exc:  # the engine failed: every running request with it
                logger.exception("The decoder engine failed a step")
                for request, tokens in running.items():
                    tokens.put(exc)
                    self.engine.remove_request(request)
                running.clear()
                continue
            for request, tokens in list(running.items()):
                while request.has_unseen_tokens():
                    tokens.put(int(request.get_unseen_token()))
                if request.is_done():
                    tokens.put(None)
                    del running[request]
                    self.engine.remove_request(request)


class OptimumDecoder:
    """optimum ``ORTModelForCausalLM`` over a ``text-generation-with-past`` export."""

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
    concurrent: bool = False,
) -> TextGenerator:
    """Open a generator directory with its runtime (``genai`` or ``optimum``). ``concurrent``:
    decode concurrent requests together (onnxruntime-genai's continuous-batching engine; the
    optimum runtime decodes one request at a time either way)."""
    decoder: TokenGenerator
    if runtime == "genai":
        decoder = (GenAIEngineDecoder if concurrent else GenAIDecoder)(
            model_dir, threads, providers
        )
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
