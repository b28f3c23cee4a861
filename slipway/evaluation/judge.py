"""An LLM judge of answers: faithfulness to the cited sources and relevance to the question,
one yes/no verdict each, asked of any OpenAI-compatible chat endpoint (vLLM, Ollama, OpenAI, a
Slipway server) or, by default, of the served generator itself.

The default judge is the model under evaluation: a small generator judging its own answers is
a weak judge (it tends to agree with itself and answers near chance on hard items), and every
report says so. Its verdicts are still useful as a check of the deterministic metrics: the
evaluation reports how often they agree (see ``judge_agreement``)."""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field
from tokenizers import Tokenizer

from slipway.generation import Request, Sampling
from slipway.generation.constraints import json_guidance
from slipway.rag.prompts import TEMPLATE_RESERVE, count_tokens, truncate

logger = logging.getLogger(__name__)

VERDICT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"verdict": {"type": "string", "enum": ["yes", "no"]}},
    "required": ["verdict"],
    "additionalProperties": False,
}
REPLY = 'Reply with JSON only: {{"verdict": "yes"}} or {{"verdict": "no"}}.'  # str.format
FAITHFULNESS = (
    "You check whether an answer is supported by its sources.\n\n"
    "Sources:\n{context}\n\n"
    "Question: {question}\n\n"
    "Answer: {answer}\n\n"
    "Is everything the answer states supported by the sources above? " + REPLY
)
RELEVANCE = (
    "You check whether an answer responds to a question.\n\n"
    "Question: {question}\n\n"
    "Answer: {answer}\n\n"
    "Does the answer respond to this question (whether or not it is correct)? " + REPLY
)
WEAK_NOTE = (
    "The judge is the served generator judging its own answers: a weak judge. Use its verdicts "
    "as a rough signal only; set judge.base_url (and judge.model) to a stronger model's "
    "OpenAI-compatible endpoint for verdicts to trust."
)
_WORD = re.compile(r"\b(yes|no)\b", re.IGNORECASE)


class JudgeConfig(BaseModel):
    """Which model judges (the ``judge`` mapping of the evaluation's configuration; an unknown
    key is an error, not ignored)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    base_url: str | None = Field(
        default=None,
        description="An OpenAI-compatible endpoint (…/v1); unset: the served generator judges.",
    )
    model: str | None = Field(default=None, description="The model name at base_url.")
    api_key_env: str = Field(
        default="SLIPWAY_JUDGE_API_KEY",
        description="The environment variable holding the endpoint's key.",
    )
    secret: str | None = Field(
        default=None,
        description="A ZenML secret with api_key (and optionally base_url, model); wins over "
        "api_key_env.",
    )
    structured: bool = Field(
        default=True,
        description="Ask for JSON with the verdict (response_format json_schema, or guided "
        "decoding in-process); false for endpoints without structured output.",
    )
    max_tokens: int = Field(default=16, ge=4, le=512)
    timeout_s: float = Field(default=60.0, gt=0)
    concurrency: int = Field(
        default=4, ge=1, le=64, description="Answers judged at once by an endpoint judge."
    )


@dataclass(frozen=True)
class Verdict:
    """A judge's yes/no (None when it gave neither), with its raw reply or why it has none."""

    value: bool | None
    raw: str = ""
    error: str | None = None


class JudgeInfo(BaseModel):
    """Who judged, for the report."""

    name: str
    weak: bool
    note: str = ""


class ChatModel(Protocol):
    """One chat model to ask; ``budget`` is its prompt room in tokens (None: not counted);
    ``concurrency``: how many questions to put to it at once."""

    name: str
    weak: bool
    budget: int | None
    concurrency: int

    def count(self, text: str) -> int: ...

    def truncate(self, text: str, tokens: int) -> str: ...

    def ask(self, prompt: str, max_tokens: int, schema: Mapping[str, Any] | None) -> str: ...


def parse_verdict(text: str) -> bool | None:
    """``{"verdict": "yes"}`` (or true/false) → True/False; else the first standalone yes or
    no in the text; None when there is neither."""
    stripped = text.strip()
    try:
        data = json.loads(stripped)
    except ValueError:
        data = None
    if isinstance(data, dict):
        value = data.get("verdict")
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("yes", "no"):
            return value.strip().lower() == "yes"
    found = _WORD.search(stripped)
    return None if found is None else found.group(1).lower() == "yes"


def sources_block(passages: Sequence[tuple[int, str, str]]) -> str:
    """``[n] title`` and text of each ``(n, title, text)`` passage."""
    return "\n\n".join(f"[{n}] {title}\n{text}" for n, title, text in passages)


class Judge:
    """Faithfulness and relevance verdicts from one chat model; prompts are cut to the model's
    budget (the sources first, then the answer) when it has one."""

    def __init__(self, model: ChatModel, structured: bool = True, max_tokens: int = 16) -> None:
        self.model = model
        self.schema = VERDICT_SCHEMA if structured else None
        self.max_tokens = max_tokens

    @property
    def info(self) -> JudgeInfo:
        return JudgeInfo(
            name=self.model.name, weak=self.model.weak, note=WEAK_NOTE if self.model.weak else ""
        )

    def faithfulness(
        self, question: str, answer: str, passages: Sequence[tuple[int, str, str]]
    ) -> Verdict:
        """Whether everything ``answer`` states is supported by ``passages`` ((n, title, text))."""
        return self._ask(FAITHFULNESS, question, answer, sources_block(passages))

    def relevance(self, question: str, answer: str) -> Verdict:
        """Whether ``answer`` responds to ``question``."""
        return self._ask(RELEVANCE, question, answer, "")

    def _ask(self, template: str, question: str, answer: str, context: str) -> Verdict:
        prompt = self._fit(template, question, answer, context)
        if prompt is None:
            return Verdict(None, error=f"the question does not fit {self.model.name}'s context")
        try:
            raw = self.model.ask(prompt, self.max_tokens, self.schema)
        except Exception as exc:  # an endpoint's error: recorded per item, counted in the report
            logger.warning("Judge %s failed: %s", self.model.name, exc)
            return Verdict(None, error=f"{type(exc).__name__}: {exc}")
        value = parse_verdict(raw)
        return Verdict(value, raw, None if value is not None else "no yes/no in the reply")

    def _fit(self, template: str, question: str, answer: str, context: str) -> str | None:
        """The prompt, cut to the model's budget: the sources to what is left after the
        question and the answer, the answer to what is left after the question (keeping room
        for some context). None when the question alone does not fit."""
        budget = self.model.budget
        if budget is None:
            return template.format(question=question, answer=answer, context=context)
        room = budget - self.max_tokens
        skeleton = self.model.count(template.format(question=question, answer="", context=""))
        keep = 32 if context else 0  # tokens of context an answer may not crowd out
        if skeleton + keep + 8 > room:
            return None
        if self.model.count(answer) > room - skeleton - keep:
            answer = self.model.truncate(answer, room - skeleton - keep)
        if context:
            context = self.model.truncate(context, room - skeleton - self.model.count(answer))
        return template.format(question=question, answer=answer, context=context)


class GeneratorChat:
    """The served generator in this process (``complete`` is a blocking whole generation, e.g.
    ``InProcessGenerator.complete_sync``), guided to the verdict's JSON when it can be."""

    weak = True
    concurrency = 1  # one generation at a time in this process

    def __init__(
        self,
        complete: Callable[[Request], Mapping[str, Any]],
        tokenizer: Tokenizer,
        context: int | None,
        guided: bool,
        name: str,
    ) -> None:
        self._complete = complete
        self._tokenizer = tokenizer
        self.guided = guided
        self.name = name
        self.budget: int | None = (context or 2048) - TEMPLATE_RESERVE

    def count(self, text: str) -> int:
        return count_tokens(self._tokenizer, text)

    def truncate(self, text: str, tokens: int) -> str:
        return truncate(self._tokenizer, text, tokens)

    def ask(self, prompt: str, max_tokens: int, schema: Mapping[str, Any] | None) -> str:
        guidance = json_guidance(schema) if schema is not None and self.guided else None
        out = self._complete(
            Request(Sampling(max_new_tokens=max_tokens, guidance=guidance), prompt=prompt)
        )
        return str(out["text"])


class OpenAIChat:
    """A model behind an OpenAI-compatible chat endpoint (the official ``openai`` client)."""

    budget: int | None = None

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None,
        timeout_s: float = 60.0,
        weak: bool = False,
        concurrency: int = 4,
    ) -> None:
        from openai import OpenAI

        self.client = OpenAI(
            base_url=base_url, api_key=api_key or "none", timeout=timeout_s, max_retries=2
        )
        self.model = model
        self.weak = weak
        self.concurrency = concurrency
        self.name = f"{model} at {base_url}"

    def count(self, text: str) -> int:
        return len(text.split())

    def truncate(self, text: str, tokens: int) -> str:
        return text

    def ask(self, prompt: str, max_tokens: int, schema: Mapping[str, Any] | None) -> str:
        extra: dict[str, Any] = {}
        if schema is not None:
            extra["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "verdict", "schema": dict(schema), "strict": True},
            }
        reply = self.client.chat.completions.create(
            model=self.model,
            messages=[{"role": "user", "content": prompt}],
            max_completion_tokens=max_tokens,
            temperature=0.0,
            **extra,
        )
        return reply.choices[0].message.content or ""


def endpoint_judge(
    config: JudgeConfig, fetch_secret: Callable[[str], Mapping[str, str]] | None = None
) -> Judge:
    """The judge at ``config.base_url`` with its key from ``config.secret`` (through
    ``fetch_secret``, e.g. a ZenML secret) or the ``config.api_key_env`` variable."""
    values: Mapping[str, str] = {}
    if config.secret:
        if fetch_secret is None:
            raise RuntimeError(
                f"judge.secret={config.secret!r} needs a secret store (run the evaluation as a "
                "ZenML step), or put the key in the variable named by judge.api_key_env."
            )
        try:
            values = fetch_secret(config.secret)
        except KeyError as exc:
            raise RuntimeError(
                f"judge.secret: no secret {config.secret!r}; create it with `zenml secret "
                f"create {config.secret} --api_key=... [--base_url=... --model=...]`."
            ) from exc
    base_url = values.get("base_url") or config.base_url
    model = values.get("model") or config.model
    if not base_url or not model:
        raise ValueError(
            "An endpoint judge needs judge.base_url and judge.model (or a judge.secret "
            "holding base_url and model)."
        )
    api_key = values.get("api_key") or os.environ.get(config.api_key_env)
    if api_key is None:
        logger.warning(
            "No key for the judge at %s (%s is unset, no judge.secret): calling it without one.",
            base_url,
            config.api_key_env,
        )
    chat = OpenAIChat(base_url, model, api_key, config.timeout_s, concurrency=config.concurrency)
    return Judge(chat, config.structured, config.max_tokens)
