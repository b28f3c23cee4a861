"""Request and response models of the HTTP API (they are the OpenAPI spec).

The sizes an operator configures (``SLIPWAY_MAX_TEXTS``, ``_MAX_CHARS``, ``_MAX_NEW_TOKENS``)
are checked against the :class:`Limits` of the app serving the request (``create_app`` sets
them per request from its settings), not read from the environment when this module is
imported; outside a request the defaults apply."""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

from slipway.config import ServeSettings
from slipway.retrieval.index import ChunkHit


@dataclass(frozen=True)
class Limits:
    """Request sizes the serving app accepts."""

    max_texts: int
    max_chars: int
    max_new_tokens: int

    @classmethod
    def of(cls, serve: ServeSettings) -> Limits:
        """The limits of ``serve``."""
        return cls(serve.max_texts, serve.max_chars, serve.max_new_tokens)

    @classmethod
    def defaults(cls) -> Limits:
        """The limits of unconfigured settings (no environment read)."""
        fields = ServeSettings.model_fields
        return cls(
            int(fields["max_texts"].default),
            int(fields["max_chars"].default),
            int(fields["max_new_tokens"].default),
        )


# Limits is frozen: sharing the default is safe.
ACTIVE_LIMITS: ContextVar[Limits] = ContextVar(
    "slipway_limits",
    default=Limits.defaults(),  # noqa: B039
)


def _at_most(setting: str, unit: str) -> AfterValidator:
    """A validator of a size against the active limit ``setting``."""

    def check(value: Any) -> Any:
        limit = getattr(ACTIVE_LIMITS.get(), setting)
        size = value if isinstance(value, int) else len(value)
        if size > limit:
            raise PydanticCustomError(
                "less_than_equal" if isinstance(value, int) else "too_long",
                "at most {limit} {unit} (SLIPWAY_{setting})",
                {"limit": limit, "unit": unit, "setting": setting.upper()},
            )
        return value

    return AfterValidator(check)


def _summary_size(text: str) -> str:
    limits = ACTIVE_LIMITS.get()
    if len(text) > limits.max_chars * limits.max_texts:
        raise PydanticCustomError(
            "too_long",
            "at most {limit} characters (SLIPWAY_MAX_CHARS x SLIPWAY_MAX_TEXTS)",
            {"limit": limits.max_chars * limits.max_texts},
        )
    return text


# A text must hold a visible character (the pattern is a search): blank input is a 400.
Text = Annotated[str, Field(min_length=1, pattern=r"\S"), _at_most("max_chars", "characters")]
Texts = Annotated[list[Text], Field(min_length=1), _at_most("max_texts", "texts")]
NewTokens = Annotated[int, Field(ge=1), _at_most("max_new_tokens", "new tokens")]
Chars = Annotated[str, _at_most("max_chars", "characters")]
Temperature = Annotated[float, Field(ge=0.0, le=2.0)]
TopP = Annotated[float, Field(gt=0.0, le=1.0)]
Stop = Annotated[list[Annotated[str, Field(min_length=1, max_length=64)]], Field(max_length=4)]
Key = Annotated[str, Field(min_length=1, max_length=64)]
Value = Annotated[str, Field(max_length=256)]
MAX_FILTER_KEYS = 16
Filters = Annotated[
    dict[Key, Value | Annotated[list[Value], Field(min_length=1, max_length=32)]],
    Field(max_length=MAX_FILTER_KEYS),
]
Seed = Annotated[int, Field(ge=0, le=2**31 - 1)]  # the decoders take a C int


class Strict(BaseModel):
    """Unknown fields are a 400 (a typo never silently changes the request); no lax coercion
    (``"1"`` or ``true`` is not a number, ``0`` is not a boolean)."""

    model_config = ConfigDict(extra="forbid", strict=True)


class Usage(BaseModel):
    """Tokens read and written (OpenAI's field names)."""

    prompt_tokens: int
    completion_tokens: int = 0
    total_tokens: int


def usage(prompt: int, completion: int = 0) -> Usage:
    """The usage of a call that read ``prompt`` tokens and wrote ``completion``."""
    return Usage(
        prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion
    )


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorBody(BaseModel):
    """Every error, in OpenAI's shape."""

    error: ErrorDetail


# --- Slipway's own routes ----------------------------------------------------------------


class EmbedRequest(Strict):
    texts: Texts = Field(description="Texts to embed, in order.")


class EmbedResponse(BaseModel):
    object: Literal["list"] = "list"
    model: str
    dimension: int
    embeddings: list[list[float]]
    usage: Usage


def _default_new_tokens(model: Any, default: int) -> None:
    """An unset ``max_new_tokens`` is ``default``, or the configured bound when lower."""
    if "max_new_tokens" not in model.model_fields_set:
        model.max_new_tokens = min(default, ACTIVE_LIMITS.get().max_new_tokens)


class SamplingFields(Strict):
    max_new_tokens: NewTokens = 64

    @model_validator(mode="after")
    def _bounded_default(self) -> SamplingFields:
        _default_new_tokens(self, 64)
        return self

    temperature: Temperature = Field(default=0.0, description="0 = greedy (deterministic, cached).")
    top_p: TopP = 1.0
    stop: Stop = Field(default_factory=list)
    seed: Seed | None = None


class GenerateRequest(SamplingFields):
    prompt: Text
    stream: bool = Field(default=False, description="Server-sent events, one per text piece.")


class GenerateResponse(BaseModel):
    model: str
    text: str
    finish_reason: Literal["stop", "length"]
    usage: Usage


class SummarizeRequest(Strict):
    text: (
        Annotated[
            str,
            Field(min_length=1, pattern=r"\S"),
            AfterValidator(_summary_size),
        ]
        | None
    ) = None
    document_ids: Annotated[list[Key], Field(min_length=1, max_length=16)] | None = None
    max_words: Annotated[int, Field(ge=5, le=400)] = Field(
        default=60, description="Length of the summary, in words (approximate)."
    )

    @model_validator(mode="after")
    def _one_source(self) -> SummarizeRequest:
        if (self.text is None) == (self.document_ids is None):
            raise ValueError("give exactly one of 'text' or 'document_ids'")
        return self


class SummarizeResponse(BaseModel):
    model: str
    summary: str
    document_ids: list[str]
    pieces: int = Field(description="Chunks summarized separately first (1 = a single pass).")
    usage: Usage


class SearchRequest(Strict):
    query: Text
    top_k: Annotated[int, Field(ge=1, le=50)] = 10
    filters: Filters | None = Field(default=None, description="metadata key -> value(s)")
    rerank: bool = Field(default=True, description="Re-rank when a re-ranker is configured.")
    graph: bool = Field(default=False, description="Fuse knowledge-graph expansion.")


class SearchResponse(BaseModel):
    index_version: str
    model: str
    reranked: bool
    graph_expanded: bool
    results: list[ChunkHit]


class AnswerRequest(Strict):
    question: Text
    top_k: Annotated[int, Field(ge=1, le=20)] = 4
    filters: Filters | None = None
    graph: bool = False
    max_new_tokens: NewTokens = 128
    temperature: Temperature = 0.0
    seed: Seed | None = None

    @model_validator(mode="after")
    def _bounded_default(self) -> AnswerRequest:
        _default_new_tokens(self, 128)
        return self


class Citation(BaseModel):
    n: int = Field(description="The [n] marker of this source in the prompt.")
    id: str
    doc_id: str
    title: str
    score: float


class AnswerResponse(BaseModel):
    model: str
    index_version: str
    answer: str
    finish_reason: Literal["stop", "length"]
    citations: list[Citation]
    usage: Usage


class Neighbour(BaseModel):
    id: str
    name: str
    type: str
    weight: float


class EntityOut(BaseModel):
    id: str
    name: str
    type: str
    mentions: int
    aliases: list[str]
    neighbours: list[Neighbour]


class EntitiesResponse(BaseModel):
    query: str
    entities: list[EntityOut]


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "slipway"


class ModelsResponse(BaseModel):
    """OpenAI's model list, plus what Slipway serves."""

    object: Literal["list"] = "list"
    data: list[ModelCard]
    slipway_version: str
    api_version: str
    registered_model: str
    version: str
    index: dict[str, Any]
    models: dict[str, dict[str, Any]]


# --- OpenAI-compatible routes ------------------------------------------------------------


class OpenAIRequest(BaseModel):
    """OpenAI's SDKs send fields we do not use (``user``, ``stream_options``...): ignored."""

    model_config = ConfigDict(extra="ignore", strict=True)
    model: Annotated[str, Field(max_length=256)] | None = None


class EmbeddingsRequest(OpenAIRequest):
    input: Text | Texts
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Annotated[int, Field(ge=1)] | None = None


class EmbeddingItem(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class EmbeddingsResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[EmbeddingItem]
    model: str
    usage: Usage


class OpenAISampling(OpenAIRequest):
    max_tokens: NewTokens | None = None
    temperature: Temperature = 1.0
    top_p: TopP = 1.0
    n: Annotated[int, Field(ge=1, le=1)] = 1
    stream: bool = False
    stop: Annotated[str, Field(min_length=1, max_length=64)] | Stop | None = None
    seed: Seed | None = None

    def stops(self) -> list[str]:
        """``stop`` as a list."""
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


class CompletionRequest(OpenAISampling):
    prompt: Text | Annotated[list[Text], Field(min_length=1, max_length=1)]


class CompletionChoice(BaseModel):
    index: int
    text: str
    finish_reason: Literal["stop", "length"] | None
    logprobs: None = None


class OpenAIResponse(BaseModel):
    """What every OpenAI completion response carries."""

    id: str
    created: int
    model: str
    usage: Usage


class CompletionResponse(OpenAIResponse):
    object: Literal["text_completion"] = "text_completion"
    choices: list[CompletionChoice]


class TextPart(BaseModel):
    model_config = ConfigDict(strict=True)
    type: Literal["text"]
    text: Chars


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    role: Literal["system", "developer", "user", "assistant"]
    content: Chars | Annotated[list[TextPart], Field(min_length=1, max_length=16)]

    def text(self) -> str:
        """The message's text (text parts joined)."""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    include_usage: bool = False


class ChatRequest(OpenAISampling):
    messages: Annotated[list[ChatMessage], Field(min_length=1, max_length=64)]
    max_completion_tokens: NewTokens | None = None
    stream_options: StreamOptions | None = None

    @model_validator(mode="after")
    def _has_text(self) -> ChatRequest:
        if not any(m.text().strip() for m in self.messages):
            raise ValueError("messages hold no text")
        return self


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: Literal["stop", "length"]
    logprobs: None = None


class ChatResponse(OpenAIResponse):
    object: Literal["chat.completion"] = "chat.completion"
    choices: list[ChatChoice]
