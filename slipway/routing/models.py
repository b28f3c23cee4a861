"""The models configuration (``SLIPWAY_MODELS_FILE``, YAML): aliases of the served bundle and
OpenAI-compatible upstreams, each with its prices, timeout, fallbacks and cooldown."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

ModelId = Annotated[str, Field(min_length=1, max_length=256)]
Fetch = Callable[[str], Mapping[str, str]]


class ModelSpec(BaseModel):
    """One model a client may name: an alias of the served bundle (no ``base_url``) or an
    OpenAI-compatible upstream."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: ModelId
    base_url: str | None = Field(
        default=None,
        pattern=r"^https?://",
        description="The upstream's OpenAI base URL (with /v1); unset: the served bundle.",
    )
    api_key_env: str | None = Field(default=None, description="Variable holding the key.")
    api_key_secret: str | None = Field(
        default=None, description="ZenML secret whose `api_key` is the key (read at start)."
    )
    model: str | None = Field(default=None, description="The upstream's id of the model.")
    context_window: int | None = Field(default=None, ge=1)
    price_in: float = Field(default=0.0, ge=0, description="Price per million prompt tokens.")
    price_out: float = Field(default=0.0, ge=0, description="Price per million output tokens.")
    timeout_s: float = Field(default=60.0, gt=0, description="Deadline of one upstream call.")
    fallbacks: list[ModelId] = Field(default_factory=list, description="Model ids to try next.")
    cooldown_s: float = Field(
        default=30.0, ge=0, description="Seconds a failing upstream is skipped."
    )

    @property
    def local(self) -> bool:
        """Whether this is the served bundle (not an upstream)."""
        return self.base_url is None

    @property
    def upstream_model(self) -> str:
        """The id the upstream knows the model by."""
        return self.model or self.id

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        """The price of a call, from the prices per million tokens."""
        return (prompt_tokens * self.price_in + completion_tokens * self.price_out) / 1e6

    @model_validator(mode="after")
    def _consistent(self) -> ModelSpec:
        upstream_only = ("api_key_env", "api_key_secret", "model")
        if self.local:
            given = [name for name in upstream_only if getattr(self, name) is not None]
            if given:
                raise ValueError(
                    f"{given[0]} is for an upstream: set base_url too, or leave it out for "
                    "an alias of the served bundle"
                )
        if self.api_key_env and self.api_key_secret:
            raise ValueError("set either api_key_env or api_key_secret, not both")
        if self.id in self.fallbacks:
            raise ValueError(f"fallbacks: {self.id!r} cannot fall back to itself")
        if len(set(self.fallbacks)) != len(self.fallbacks):
            raise ValueError("fallbacks: an id is listed twice")
        return self


class ModelsConfig(BaseModel):
    """The whole file: ``models:`` a list of :class:`ModelSpec`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    models: Annotated[list[ModelSpec], Field(min_length=1)]

    @model_validator(mode="after")
    def _known_ids(self) -> ModelsConfig:
        ids = [m.id for m in self.models]
        twice = sorted({i for i in ids if ids.count(i) > 1})
        if twice:
            raise ValueError(f"model ids must be unique; listed twice: {', '.join(twice)}")
        return self

    def check_fallbacks(self, served_ids: tuple[str, ...]) -> None:
        """A ``ValueError`` for a fallback that names neither a model of this file nor the
        served bundle (whose ids are known only once it is loaded)."""
        known = {m.id for m in self.models} | set(served_ids)
        for n, spec in enumerate(self.models):
            unknown = [f for f in spec.fallbacks if f not in known]
            if unknown:
                raise ValueError(
                    f"SLIPWAY_MODELS_FILE: models.{n}.fallbacks: {', '.join(map(repr, unknown))} "
                    f"is neither a model of the file nor the served {' or '.join(served_ids)}"
                )

    def by_id(self) -> dict[str, ModelSpec]:
        """The models by id."""
        return {m.id: m for m in self.models}


def _field(location: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in location) or "models"


def load_models(path: Path) -> ModelsConfig:
    """The models file at ``path``; a ``ValueError`` naming the file and the first bad field."""
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"SLIPWAY_MODELS_FILE={path}: cannot read it: {exc}") from exc
    try:
        return ModelsConfig.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise ValueError(
            f"SLIPWAY_MODELS_FILE={path}: {_field(first['loc'])}: {first['msg']}{more}"
        ) from exc


def api_keys(config: ModelsConfig, fetch: Fetch | None = None) -> dict[str, str]:
    """Each upstream's key by model id, from its variable or its ZenML secret (``fetch``
    returns a secret's values by name); a ``ValueError`` naming what is missing."""
    keys: dict[str, str] = {}
    for spec in config.models:
        if spec.api_key_env:
            value = os.environ.get(spec.api_key_env)
            if not value:
                raise ValueError(
                    f"Model {spec.id!r}: the variable {spec.api_key_env} (api_key_env) is unset."
                )
            keys[spec.id] = value
        elif spec.api_key_secret:
            if fetch is None:
                raise ValueError(f"Model {spec.id!r}: no secret store to read api_key_secret.")
            try:
                value = fetch(spec.api_key_secret).get("api_key", "")
            except KeyError as exc:
                raise ValueError(
                    f"Model {spec.id!r}: secret {spec.api_key_secret!r} does not exist: "
                    f"`zenml secret create {spec.api_key_secret} --api_key=...`"
                ) from exc
            if not value:
                raise ValueError(
                    f"Model {spec.id!r}: secret {spec.api_key_secret!r} has no api_key."
                )
            keys[spec.id] = value
    return keys
