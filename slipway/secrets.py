"""Settings filled from a named secret (a ZenML secret in the steps and the CLI): the
credentials of Neo4j, Pinecone and Redis never have to sit in a pod's environment.

The core stays framework-free: callers pass ``fetch``, which returns a secret's values by name."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

from pydantic_settings import BaseSettings

S = TypeVar("S", bound=BaseSettings)
Fetch = Callable[[str], Mapping[str, str]]


@dataclass(frozen=True)
class SecretSpec:
    """How one secret maps onto settings: the setting naming it, and key → setting field."""

    variable: str
    fields: Mapping[str, str]
    required: tuple[str, ...]

    def create_command(self, name: str) -> str:
        """The ``zenml secret create`` that makes a secret of this shape."""
        return f"zenml secret create {name} " + " ".join(f"--{k}=..." for k in self.fields)


NEO4J = SecretSpec(
    "SLIPWAY_NEO4J_SECRET",
    {
        "uri": "neo4j_uri",
        "user": "neo4j_user",
        "password": "neo4j_password",
        "database": "neo4j_database",
    },
    ("uri", "password"),
)
PINECONE = SecretSpec(
    "SLIPWAY_PINECONE_SECRET",
    {"api_key": "pinecone_api_key", "index": "pinecone_index", "host": "pinecone_host"},
    ("api_key",),
)
REDIS = SecretSpec("SLIPWAY_REDIS_SECRET", {"url": "redis_url"}, ("url",))


def with_secret(settings: S, name: str | None, spec: SecretSpec, fetch: Fetch) -> S:
    """``settings`` with the fields of ``spec`` taken from secret ``name`` (unchanged when
    ``name`` is empty); a missing secret or key is an error naming what to create."""
    if not name:
        return settings
    try:
        values = fetch(name)
    except KeyError as exc:
        raise RuntimeError(
            f"Secret {name!r} ({spec.variable}) does not exist: `{spec.create_command(name)}`"
        ) from exc
    missing = [key for key in spec.required if not values.get(key)]
    if missing:
        raise RuntimeError(
            f"Secret {name!r} ({spec.variable}) needs the keys "
            f"{' and '.join(spec.required)}; missing: {', '.join(missing)} "
            f"(found: {', '.join(sorted(values)) or 'none'})."
        )
    overrides = {field: values[key] for key, field in spec.fields.items() if values.get(key)}
    return type(settings)(**{**settings.model_dump(), **overrides})
