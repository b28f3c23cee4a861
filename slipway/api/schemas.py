"""Request and response models of the HTTP API (they are the OpenAPI spec).

The sizes an operator configures (``SLIPWAY_MAX_TEXTS``, ``_MAX_CHARS``, ``_MAX_NEW_TOKENS``)
are checked against the :class:`Limits` of the app serving the request (``create_app`` sets
them per request from its settings), not read from the environment when this module is
imported; outside a request the defaults apply."""

from __future__ import annotations

import json
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
    prompt_version: str = Field(description="The summarize prompt used: name/version.")
    summary: str
    document_ids: list[str]
    pieces: int = Field(description="Chunks summarized separately first (1 = a single pass).")
    usage: Usage


class SearchRequest(Strict):
    query: Text
    top_k: Annotated[int, Field(ge=1, le=50)] = 10
    filters: Filters | None = Field(default=None, description="metadata key -> value(s)")
    rerank: bool = Field(default=True, description="Re-rank when a re-ranker is configured.")
    graph: bool | None = Field(
        default=None,
        description="Fuse graph retrieval (Personalized PageRank from the query's entities over "
        "the index version's entity graph); unset: as the index gate decided for the version "
        "(`graph_retrieval` in /v1/models).",
    )
    group_by: Literal["document"] | None = Field(
        default=None,
        description='"document": one result per document (its best chunk), with its other '
        "matching chunks in `other_chunks`; `top_k` counts documents.",
    )


class SearchResponse(BaseModel):
    index_version: str
    model: str
    reranked: bool
    graph_expanded: bool = Field(description="Whether graph retrieval was fused.")
    results: list[ChunkHit]


class RerankDocument(Strict):
    text: Text


ChunkId = Annotated[str, Field(min_length=1, max_length=256)]


class RerankRequest(Strict):
    """The re-rank request of TEI and Cohere: a query and documents (texts, or indexed chunk
    ids), scored by the bundle's cross-encoder."""

    model: str | None = Field(default=None, description="A served model id (optional).")
    query: Text
    documents: Annotated[list[Text | RerankDocument], _at_most("max_texts", "documents")] | None = (
        Field(default=None, description="Texts to score (strings or {text} objects).")
    )
    ids: Annotated[list[ChunkId], _at_most("max_texts", "ids")] | None = Field(
        default=None, description="Chunk ids of the served index to score (instead of texts)."
    )
    top_n: Annotated[int, Field(ge=1)] | None = Field(
        default=None, description="Return the best this many (default: all)."
    )
    return_documents: bool = Field(default=False, description="Include each document's text.")

    @model_validator(mode="after")
    def _one_source(self) -> RerankRequest:
        if (self.documents is None) == (self.ids is None):
            raise ValueError("give exactly one of 'documents' or 'ids'")
        if not (self.documents or self.ids):
            raise ValueError("'documents' or 'ids' must not be empty")
        return self

    def texts(self) -> list[str]:
        """The documents' texts (``documents`` only)."""
        return [d if isinstance(d, str) else d.text for d in self.documents or []]


class RerankResult(BaseModel):
    index: int = Field(description="Position of the document in the request.")
    relevance_score: float
    id: str | None = Field(default=None, description="The chunk id (requests by ids).")
    document: RerankDocument | None = None


class RerankResponse(BaseModel):
    id: str
    model: str
    results: list[RerankResult] = Field(description="Best first.")
    usage: Usage


class TokenizeRequest(Strict):
    """Token ids and counts of texts under a served model's tokenizer (vLLM's /tokenize)."""

    model: str | None = Field(default=None, description="A served model id (optional).")
    input: Text | Texts
    kind: Literal["generation", "embedding"] = Field(
        default="generation",
        description="Whose tokenizer: the generator's (chat, completions) or the embedder's.",
    )
    add_special_tokens: bool = True
    return_token_strs: bool = False


class Tokenized(BaseModel):
    count: int
    tokens: list[int]
    token_strs: list[str] | None = None


class TokenizeResponse(BaseModel):
    model: str
    kind: Literal["generation", "embedding"]
    max_model_len: int | None = Field(description="The model's context in tokens, when known.")
    count: int = Field(description="Tokens of every input together.")
    results: list[Tokenized]


class AnswerRequest(Strict):
    question: Text
    top_k: Annotated[int, Field(ge=1, le=20)] = 4
    filters: Filters | None = None
    graph: bool | None = Field(
        default=None,
        description="Retrieve through graph retrieval too (see /v1/search); unset: as the index "
        "gate decided.",
    )
    max_new_tokens: NewTokens = 128
    temperature: Temperature = 0.0
    seed: Seed | None = None
    min_relevance: float | None = Field(
        default=None,
        ge=-1.0,
        le=1.0,
        description="Abstain unless a retrieved passage has at least this cosine similarity "
        "to the question; default: the server's SLIPWAY_ANSWER_MIN_RELEVANCE.",
    )

    @model_validator(mode="after")
    def _bounded_default(self) -> AnswerRequest:
        _default_new_tokens(self, 128)
        return self


ChunkIds = Annotated[list[Annotated[str, Field(max_length=256)]], Field(max_length=20)]


class FeedbackRequest(Strict):
    request_id: Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]{1,128}$")] = Field(
        description="The X-Request-ID of the /v1/answer response being rated."
    )
    rating: Literal["positive", "negative"]
    comment: Annotated[str, Field(max_length=4000)] | None = None
    expected_chunk_ids: ChunkIds | None = Field(
        default=None, description="The chunk ids the answer should have cited."
    )


class FeedbackResponse(BaseModel):
    request_id: str
    trace_id: str
    prompt_version: str
    assessments: list[str] = Field(description="Ids of the assessments stored on the trace.")


class Citation(BaseModel):
    n: int = Field(description="The [n] marker of this source in the prompt.")
    id: str
    doc_id: str
    title: str
    score: float = Field(description="Its retrieval score (fused, or the re-ranker's).")
    relevance: float = Field(description="Cosine similarity of the passage to the question.")
    cited: bool = Field(description="Whether the answer carries its [n] marker.")


class AnswerResponse(BaseModel):
    model: str
    prompt_version: str = Field(
        description="The answer prompt used (name/version in the prompt registry); with an "
        "online A/B the variant this caller's experiment unit gets."
    )
    index_version: str
    answer: str
    finish_reason: Literal["stop", "length", "no_context"] = Field(
        description="'no_context': no retrieved passage was relevant enough; the answer is an "
        "abstention and nothing was generated."
    )
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


class SimilarEntity(BaseModel):
    id: str
    name: str
    type: str
    similarity: float = Field(description="Cosine similarity of the two graph embeddings.")


class SimilarEntitiesResponse(BaseModel):
    id: str
    similar: list[SimilarEntity] = Field(
        description="Entities whose GNN embeddings (trained by the kg_update pipeline to "
        "predict co-occurrence links) are closest, most similar first."
    )


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
    prompts: dict[str, list[dict[str, Any]]] = Field(
        description="The served prompt versions by kind (answer, summarize, chat_system), with "
        "their traffic weights when several are A/B-tested."
    )


# --- OpenAI-compatible routes ------------------------------------------------------------


def _unsupported(*accepted: Any) -> AfterValidator:
    """An OpenAI field this server does not implement: accepted only at a value that changes
    nothing (``accepted``: unset, its default, an empty list...), else a 400 naming it."""

    def check(value: Any) -> Any:
        if value is None or any(value == a for a in accepted):
            return value
        raise PydanticCustomError(
            "unsupported_parameter",
            "not supported by this server; leave it unset"
            + (" or send {default}" if accepted else ""),
            {"default": " or ".join(json.dumps(a) for a in accepted)},
        )

    return AfterValidator(check)


# OpenAI's range for the penalties (a value outside is a 400 as on OpenAI); only 0 is served.
Penalty = Annotated[float, Field(ge=-2.0, le=2.0), _unsupported(0)]
LogitBias = Annotated[dict[str, Any], _unsupported({})]


class OpenAIRequest(BaseModel):
    """OpenAI's SDKs send fields that change nothing here (``user``, ``metadata``, ``store``,
    ``service_tier``...): ignored. Fields that would change the output and are not
    implemented are declared below and refused unless left at their defaults."""

    model_config = ConfigDict(extra="ignore", strict=True)
    model: Annotated[str, Field(max_length=256)] | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    logit_bias: LogitBias | None = None


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
    echo: Annotated[bool, _unsupported(False)] = False
    suffix: Annotated[str, _unsupported("")] | None = None
    best_of: Annotated[int, _unsupported(1)] | None = None
    logprobs: Annotated[int, _unsupported(0)] | None = None


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


class MessageFunction(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    name: Annotated[str, Field(max_length=64)]
    arguments: Chars


class MessageToolCall(BaseModel):
    """A call the assistant made earlier in the conversation (sent back by the client)."""

    model_config = ConfigDict(extra="ignore", strict=True)
    id: Annotated[str, Field(max_length=64)]
    type: Literal["function"] = "function"
    function: MessageFunction


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Chars | Annotated[list[TextPart], Field(min_length=1, max_length=16)] | None = None
    tool_calls: Annotated[list[MessageToolCall], Field(max_length=16)] | None = None
    tool_call_id: Annotated[str, Field(max_length=64)] | None = None

    @model_validator(mode="after")
    def _has_content(self) -> ChatMessage:
        if self.content is None and not (self.role == "assistant" and self.tool_calls):
            raise ValueError("content is required (null only for an assistant's tool calls)")
        return self

    def text(self) -> str:
        """The message's text (text parts joined); an assistant's tool calls as the JSON the
        model wrote for them."""
        if isinstance(self.content, str):
            text = self.content
        else:
            text = "".join(part.text for part in self.content or [])
        for call in self.tool_calls or []:
            try:
                arguments = json.loads(call.function.arguments)
            except json.JSONDecodeError:
                arguments = call.function.arguments
            text += json.dumps({"name": call.function.name, "arguments": arguments})
        return text


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    include_usage: bool = False


def _valid_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """A JSON schema the decoder can be constrained to (its metaschema checks it)."""
    from jsonschema import SchemaError, validators

    try:
        validators.validator_for(schema).check_schema(schema)
    except SchemaError as exc:
        raise PydanticCustomError(
            "invalid_json_schema", "not a valid JSON schema: {reason}", {"reason": exc.message}
        ) from None
    return schema


JsonSchema = Annotated[dict[str, Any], AfterValidator(_valid_schema)]


class JsonSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    name: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]
    description: str | None = None
    schema_: Annotated[JsonSchema, Field(alias="schema")] = Field(default_factory=dict)
    strict: bool | None = None


class ResponseFormat(BaseModel):
    """``text`` (the default), ``json_object`` (any JSON object) or ``json_schema`` (JSON valid
    against the schema): the decoder is constrained to it."""

    model_config = ConfigDict(extra="forbid", strict=True)
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> ResponseFormat:
        if (self.type == "json_schema") != (self.json_schema is not None):
            raise ValueError("json_schema is required with type json_schema, and only then")
        return self


class FunctionSpec(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    name: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]
    description: str | None = None
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})
    strict: bool | None = None


class Tool(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    type: Literal["function"]
    function: FunctionSpec


class NamedFunction(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    name: str


class ToolChoiceFunction(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    type: Literal["function"]
    function: NamedFunction


class ChatRequest(OpenAISampling):
    messages: Annotated[list[ChatMessage], Field(min_length=1, max_length=64)]
    max_completion_tokens: NewTokens | None = None
    stream_options: StreamOptions | None = None
    response_format: ResponseFormat | None = None
    tools: Annotated[list[Tool], Field(max_length=32)] | None = None
    tool_choice: Literal["none", "auto", "required"] | ToolChoiceFunction | None = None
    parallel_tool_calls: bool | None = None
    logprobs: Annotated[bool, _unsupported(False)] | None = None
    top_logprobs: Annotated[int, _unsupported(0)] | None = None
    functions: Annotated[list[Any], _unsupported([])] | None = None
    function_call: Annotated[Any, _unsupported("none")] | None = None

    @model_validator(mode="after")
    def _tools_consistent(self) -> ChatRequest:
        names = [t.function.name for t in self.tools or []]
        if len(set(names)) != len(names):
            raise ValueError("tools: function names must be unique")
        choice = self.tool_choice
        if isinstance(choice, ToolChoiceFunction) and choice.function.name not in names:
            raise ValueError(f"tool_choice names {choice.function.name!r}, not one of the tools")
        if choice == "required" and not names:
            raise ValueError("tool_choice 'required' needs tools")
        calls_tools = bool(names) and choice != "none"
        if calls_tools and self.response_format is not None and self.response_format.type != "text":
            raise ValueError("send either tools or a JSON response_format, not both")
        return self

    @model_validator(mode="after")
    def _has_text(self) -> ChatRequest:
        if not any(m.text().strip() for m in self.messages):
            raise ValueError("messages hold no text")
        return self


class FunctionCall(BaseModel):
    name: str
    arguments: str = Field(description="The arguments, as a JSON string (as OpenAI sends them).")


class ToolCall(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    tool_calls: list[ToolCall] | None = None


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: Literal["stop", "length", "tool_calls"]
    logprobs: None = None


class ChatResponse(OpenAIResponse):
    object: Literal["chat.completion"] = "chat.completion"
    choices: list[ChatChoice]


# --- routing: the models of the models file ------------------------------------------------


class RoutedModel(ModelCard):
    """A model a client may name: the served bundle (or an alias of it) or an upstream."""

    context_window: int | None = None
    price_in: float = Field(default=0.0, description="Price per million prompt tokens.")
    price_out: float = Field(default=0.0, description="Price per million output tokens.")
    fallbacks: list[str] = Field(default_factory=list)


class RoutedModelsResponse(ModelsResponse):
    """The model list: every model the caller may name, plus what Slipway serves."""

    data: list[RoutedModel]  # type: ignore[assignment]
