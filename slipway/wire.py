"""Typed requests and replies between Slipway's services (the API worker, the encoder and the
generator): validated on both sides of a hop, and the services' OpenAPI schemas."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from slipway.generation import Request, Sampling
from slipway.generation.constraints import Guidance

# The encoder service takes what an API worker merged: bounded, so a bad caller gets a 400.
EncoderTexts = Annotated[list[str], Field(min_length=1, max_length=4096)]


class EncoderInfo(BaseModel):
    """What the encoder is and how it batches."""

    dimension: int
    provider: str
    batching: Literal["continuous"] = "continuous"
    max_batch_tokens: int
    placement: Literal["api", "service"]


class GenerationRequest(BaseModel):
    """One generation: a prompt (chat-templated unless ``chat`` is false) or a conversation,
    and how to decode it."""

    model_config = ConfigDict(extra="forbid")

    prompt: str | None = None
    messages: list[tuple[str, str]] = Field(default_factory=list)
    chat: bool = True
    max_new_tokens: int = Field(ge=1)
    temperature: float = Field(default=0.0, ge=0.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    stop: list[str] = Field(default_factory=list, max_length=16)
    seed: int | None = None
    guidance_kind: Literal["json_schema", "lark_grammar"] | None = None
    guidance: str | None = None

    @classmethod
    def of(cls, request: Request) -> GenerationRequest:
        """The wire form of a :class:`~slipway.generation.Request`."""
        s = request.sampling
        return cls(
            prompt=request.prompt,
            messages=list(request.messages),
            chat=request.chat,
            max_new_tokens=s.max_new_tokens,
            temperature=s.temperature,
            top_p=s.top_p,
            stop=list(s.stop),
            seed=s.seed,
            guidance_kind=s.guidance.kind if s.guidance else None,
            guidance=s.guidance.data if s.guidance else None,
        )

    def request(self) -> Request:
        """The :class:`~slipway.generation.Request` it carries."""
        sampling = Sampling(
            max_new_tokens=self.max_new_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            stop=tuple(self.stop),
            seed=self.seed,
            guidance=Guidance(self.guidance_kind, self.guidance)
            if self.guidance_kind is not None and self.guidance is not None
            else None,
        )
        return Request(sampling, self.prompt, tuple(self.messages), self.chat)


class GenerationResult(BaseModel):
    """A finished generation."""

    text: str
    finish_reason: Literal["stop", "length"]
    prompt_tokens: int
    completion_tokens: int


class GeneratorInfo(BaseModel):
    """What the generator is and whether it decodes concurrent requests together."""

    provider: str
    context_length: int | None
    concurrent: bool
    guided: bool = False  # constrained decoding (response_format, tools)
