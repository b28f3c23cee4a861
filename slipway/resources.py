"""What a request works with, built once per API worker from settings: the model clients,
tokenizers, the published index (hot reloaded when a new version is published), the knowledge
graph, credentials, rate limits, the result cache and tracing. This is the one place that picks
adapters (file or Redis keys, in-process or Redis limits and cache), from the ``profile``
(``local`` or ``production``) and the settings that override it. No web framework here."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any, Protocol

import numpy as np

from slipway.access import Reader
from slipway.api import metrics
from slipway.api.auth import Authenticator, Principal
from slipway.api.errors import ApiError
from slipway.api.keys import key_store
from slipway.api.ratelimit import MemoryRateLimiter, RateLimiter, RedisRateLimiter
from slipway.cache import MemoryCache, RedisCache, ResultCache, cache_key
from slipway.config import ApiSettings, GraphSettings, IndexSettings, ServeSettings, get_settings
from slipway.documents.chunking import load_tokenizer
from slipway.generation import Request, context_length
from slipway.graph.snapshot import GraphRetriever, has_snapshot
from slipway.prompts import load_served
from slipway.retrieval.hybrid import FusionConfig, HybridSearcher, load_fusion
from slipway.retrieval.index import IndexDir, OpenIndex
from slipway.retrieval.rerank import RERANKER_ROLE, Reranker, configured_reranker
from slipway.routing.models import api_keys, load_models
from slipway.routing.router import Router
from slipway.routing.upstream import HttpUpstream
from slipway.routing.usage import UsageRecorder, UsageStore, usage_store
from slipway.serving import ServedBundle
from slipway.tracing import Tracer

logger = logging.getLogger(__name__)
INDEX_CHECK_SECONDS = 5.0


class EmbedClient(Protocol):
    """The encoder, wherever it runs."""

    async def embed(self, texts: list[str]) -> np.ndarray: ...

    async def describe(self) -> dict[str, Any]: ...


class GenerateClient(Protocol):
    """The generator, wherever it runs: events as in
    :func:`slipway.generation.generation_events`."""

    async def complete(self, request: Request) -> dict[str, Any]: ...

    def events(self, request: Request) -> AsyncIterator[dict[str, Any]]: ...

    async def describe(self) -> dict[str, Any]: ...


class Coalescer:
    """Merges concurrent ``embed`` calls of this worker into one call of ``client`` (up to
    ``max_texts`` texts, gathered for at most ``wait_ms``): one hop to the encoder service per
    batch instead of per request. The encoder service batches again across workers."""

    def __init__(self, client: EmbedClient, max_texts: int, wait_ms: float = 2.0) -> None:
        self.client = client
        self.max_texts = max_texts
        self.wait = wait_ms / 1000.0
        self._pending: list[tuple[list[str], asyncio.Future[np.ndarray]]] = []
        self._size = 0
        self._flush: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Future[None]] = set()

    async def embed(self, texts: list[str]) -> np.ndarray:
        """Vectors for ``texts``, computed with whatever else arrived meanwhile."""
        if self.max_texts <= 1 or len(texts) >= self.max_texts:
            return np.asarray(await self.client.embed(texts), dtype=np.float32)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[np.ndarray] = loop.create_future()
        if self._size + len(texts) > self.max_texts:
            self._send()
        self._pending.append((texts, future))
        self._size += len(texts)
        if self._size >= self.max_texts:
            self._send()
        elif self._flush is None:
            self._flush = loop.call_later(self.wait, self._send)
        return await future

    def _send(self) -> None:
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
        batch, self._pending, self._size = self._pending, [], 0
        if batch:
            task = asyncio.ensure_future(self._run(batch))
            self._tasks.add(task)  # a task nobody references may be collected mid-flight
            task.add_done_callback(self._tasks.discard)

    async def _run(self, batch: list[tuple[list[str], asyncio.Future[np.ndarray]]]) -> None:
        try:
            vectors = np.asarray(
                await self.client.embed([t for texts, _ in batch for t in texts]), dtype=np.float32
            )
        except BaseException as exc:
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        start = 0
        for texts, future in batch:
            if not future.done():
                future.set_result(vectors[start : start + len(texts)])
            start += len(texts)

    async def describe(self) -> dict[str, Any]:
        return await self.client.describe()


@dataclass
class IndexState:
    """The opened published version, its graph retriever (read from the same version) and
    searchers over them: swapped together when a newer version is published."""

    opened: OpenIndex
    searchers: dict[bool, HybridSearcher] = field(default_factory=dict)  # by graph retrieval
    retriever: GraphRetriever | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def graph_default(self) -> bool:
        """Whether the index gate turned graph retrieval on for this version."""
        gate = self.opened.manifest.graph
        return gate is not None and gate.enabled

    @property
    def has_graph(self) -> bool:
        """Whether this version has a graph snapshot."""
        return has_snapshot(self.opened.index.version_dir(self.opened.version))

    def graph_retriever(self, nlp: Callable[[], Any]) -> GraphRetriever:
        """The version's graph retriever, loaded once (its PageRank factors with it)."""
        with self.lock:
            if self.retriever is None:
                directory = self.opened.index.version_dir(self.opened.version)
                self.retriever = GraphRetriever.load(directory, nlp())
            return self.retriever


class Resources:
    """Everything a request needs, built once per API worker by :func:`build_resources`."""

    def __init__(
        self,
        served: ServedBundle,
        embedder: EmbedClient,
        generator: GenerateClient,
        serve: ServeSettings | None = None,
        api: ApiSettings | None = None,
        index: IndexSettings | None = None,
    ) -> None:
        self.served = served
        self.serve = serve or ServeSettings()
        self.embedder = embedder
        self.generator = generator
        self.api = api or ApiSettings()
        self.index_settings = index or IndexSettings()
        bundle = served.bundle
        self.embed_tokenizer = load_tokenizer(bundle.role_dir("embedder"))
        self.gen_tokenizer = load_tokenizer(bundle.role_dir("generator"))
        self.model_context = context_length(bundle.role_dir("generator"))
        self.model_id = f"{served.model_name}:{served.version}"
        self.prompts = load_served(bundle.root)
        self.auth = Authenticator(self._key_store(), self.api)
        self.limiter = self._limiter()
        self.cache = self._cache()
        self.router = self._router()
        metrics.usage_models(self.router.ids)
        self._index: IndexState | None = None
        self._index_checked = 0.0
        self._index_lock = threading.Lock()
        self._refused: set[str] = set()
        self._generator_info: dict[str, Any] | None = None
        self._graph: Any = None
        self._nlp: Any = None
        self._vectors: Any = None
        self._nlp_lock = threading.Lock()
        self._graph_lock = threading.Lock()
        self.tracer = Tracer(
            self.serve.trace_sample_rate,
            get_settings().mlflow_tracking_uri,
            self.serve.trace_experiment,
            always=self.serve.feedback,
        )

    # --- set-up ------------------------------------------------------------------------

    @property
    def remote_credentials(self) -> bool:
        """Whether checking a credential or a request budget is a network round trip."""
        return self.api.key_store == "redis" or self.api.rate_limit_store == "redis"

    @cached_property
    def _redis(self) -> Any:
        """One client (and connection pool) for the rate limiter and the cache."""
        import redis

        if not self.api.redis_url:
            raise ValueError(
                "A Redis-backed key store, rate limiter or cache needs "
                "SLIPWAY_REDIS_URL (e.g. redis://host:6379/0)."
            )
        return redis.Redis.from_url(self.api.redis_url)

    def _key_store(self) -> Any:
        path = self.api.api_keys_file or get_settings().home / "api_keys.json"
        return key_store(self.api.key_store, path, self.api.redis_url)

    def _limiter(self) -> RateLimiter:
        if self.api.rate_limit_store == "redis":
            return RedisRateLimiter(self._redis)
        return MemoryRateLimiter()

    def _cache(self) -> ResultCache | None:
        if self.api.cache == "off":
            return None
        if self.api.cache == "redis":
            return RedisCache(self._redis, ttl_seconds=self.api.cache_ttl)
        return MemoryCache(
            self.api.cache_max_entries,
            float(self.api.cache_ttl),
            max_bytes=int(self.api.cache_max_mb * 2**20),
        )

    def _router(self) -> Router:
        """The models a client may name: the served bundle's ids, and the models file's
        aliases and upstreams (their keys read once, here)."""
        config = load_models(self.serve.models_file) if self.serve.models_file else None
        keys: dict[str, str] = {}
        if config is not None:
            fetch = None
            if any(m.api_key_secret for m in config.models):
                from slipway.cli import zenml_secret

                fetch = zenml_secret
            keys = api_keys(config, fetch)
        upstream = HttpUpstream(keys, self.serve.upstream_max_connections)
        return Router(config, (self.model_id, self.served.model_name), upstream)

    async def close(self) -> None:
        """At shutdown: every usage record written (none is lost to a restart), the upstream
        connections closed."""
        if "usage" in self.__dict__:  # a recorder was made: wait for what it holds
            await asyncio.to_thread(self.usage.flush)
        await self.router.upstream.aclose()

    @cached_property
    def usage_store(self) -> UsageStore:
        """Where usage and budgets are counted: the SQLite file, or Redis/Valkey."""
        path = self.api.usage_file or get_settings().home / "usage.db"
        return usage_store(self.api.usage_store, path, lambda: self._redis)

    @cached_property
    def usage(self) -> UsageRecorder:
        """Records usage in a thread of its own (and counts it in the metrics)."""
        return UsageRecorder(self.usage_store, metrics.usage)

    # --- the index ---------------------------------------------------------------------

    def index_state(self) -> IndexState:
        """The published index version, reopened when a newer one is published (checked at
        most every few seconds, in a thread of its own: requests keep the version they have
        meanwhile, and the event loop never waits for an index to open); 503 while there is
        none."""
        state = self._index
        if state is None:
            return self.check_index()  # nothing to serve meanwhile
        if time.monotonic() - self._index_checked >= INDEX_CHECK_SECONDS:
            self._check_in_background()
        return state

    def _check_in_background(self) -> None:
        if not self._index_lock.acquire(blocking=False):
            return  # a check is running

        def check() -> None:
            try:
                self._check_locked()
            except ApiError:
                pass  # logged; the version in use stays
            finally:
                self._index_lock.release()

        threading.Thread(target=check, name="slipway-index-check", daemon=True).start()

    def check_index(self) -> IndexState:
        """Open the published version now if it is not the one in use (blocking)."""
        with self._index_lock:
            return self._check_locked()

    @cached_property
    def embedder_fingerprint(self) -> str:
        """The served embedder's fingerprint: the only index versions this worker searches."""
        from slipway.embedding import model_fingerprint

        return model_fingerprint(self.served.bundle.role_dir("embedder"))

    def _paired(self, directory: IndexDir) -> str:
        """The version to serve: the pinned one, else the published one when the served
        embedder built it, else the newest retained one it built (the other embedder's version
        is refused, logged once per version, and the pair in use keeps serving)."""
        from slipway.retrieval.index import EmbedderMismatch, paired_version

        pinned = self.serve.index_version
        if pinned is not None:
            if directory.manifest(pinned).embedder != self.embedder_fingerprint:
                raise EmbedderMismatch(
                    f"Index {directory.name!r} {pinned} was built by another embedder than "
                    f"the served {self.model_id}; unset SLIPWAY_INDEX_VERSION or serve its model."
                )
            return pinned
        version = paired_version(directory, self.embedder_fingerprint)
        published = directory.published()
        if published != version and published not in self._refused:
            self._refused.add(published or "")
            metrics.index_refused(directory.name)
            logger.warning(
                "Index %s %s was built by another embedder than the served %s: serving %s, "
                "the newest version this embedder built, until this service is restarted "
                "with that version's model.",
                directory.name,
                published,
                self.model_id,
                version,
            )
        return version

    def _check_locked(self) -> IndexState:
        from slipway.retrieval.index import OpenIndex
        from slipway.retrieval.stores import index_dir, vector_store

        now = time.monotonic()
        if self._index is not None and now - self._index_checked < INDEX_CHECK_SECONDS:
            return self._index
        directory = index_dir(self.serve.index_name, self.index_settings)
        try:
            version = self._paired(directory)
            if self._index is None or version != self._index.opened.version:
                store = vector_store(directory, self.index_settings)
                opened = OpenIndex(directory, version, store)
                state = IndexState(opened)
                if state.graph_default:  # ready before the version serves its first query
                    state.graph_retriever(self.nlp)
                logger.info("Serving index %s version %s", directory.name, opened.version)
                previous = self._index.opened.version if self._index is not None else None
                self._index = state
                metrics.index_served(directory, opened.version, previous)
        except (LookupError, OSError, ValueError, RuntimeError) as exc:
            self._index_checked = now
            if self._index is None:
                raise ApiError(
                    503,
                    f"No servable index {self.serve.index_name!r}: {exc}",
                    type="server_error",
                    code="index_unavailable",
                ) from exc
            logger.warning(
                "Index check failed; still serving %s: %s", self._index.opened.version, exc
            )
        self._index_checked = now
        return self._index

    def ready(self) -> bool:
        """Ready when the published index is loaded (the models load before the service)."""
        try:
            self.index_state()
        except ApiError as exc:
            logger.warning("Not ready: %s", exc.message)
            metrics.readiness(False)
            return False
        metrics.readiness(True)
        return True

    def searcher(self, state: IndexState, graph: bool) -> HybridSearcher:
        """A hybrid searcher over ``state`` with or without graph retrieval (fused at the
        weight the index gate chose); it searches with query vectors the caller embedded
        (``search_async(embed=...)``). Re-ranking is the use case's
        (``slipway.rag.search.rerank_top``), one path for searches and answers."""
        if graph not in state.searchers:
            fusion, expander = self.fusion, None
            if graph:
                expander = state.graph_retriever(self.nlp).search_many
                gate = state.opened.manifest.graph
                if gate is not None:
                    fusion = replace(fusion, graph_weight=gate.weight, rrf_k=gate.rrf_k)
            state.searchers[graph] = HybridSearcher(
                None,
                state.opened.dense,
                state.opened.sparse,
                fusion=fusion,
                text_of=state.opened.text_of,
                expander=expander,
            )
        return state.searchers[graph]

    def use_graph(self, state: IndexState, requested: bool | None) -> bool:
        """Whether a search fuses graph retrieval: as asked, else as the index gate decided
        for the version; 400 when asked of a version without a graph snapshot."""
        if requested is None:
            return state.graph_default
        if requested and not state.has_graph:
            raise ApiError(
                400,
                f"Index version {state.opened.version} has no graph snapshot; refresh the "
                "index with its graph on (index.graph: true) or leave `graph` unset.",
                param="graph",
                code="graph_unavailable",
            )
        return requested

    def entity_vectors(self) -> Any:
        """The entity vector table the kg_update pipeline writes (graph embeddings)."""
        with self._graph_lock:
            if self._vectors is None:
                from slipway.graph.vectors import EntityVectors

                self._vectors = EntityVectors(get_settings().home / "entity_vectors")
            return self._vectors

    def nlp(self) -> Any:
        """The spaCy NER pipeline questions are read with (loaded once)."""
        with self._nlp_lock:
            if self._nlp is None:
                from slipway.graph.extraction import load_nlp

                self._nlp = load_nlp(GraphSettings().ner_model)
            return self._nlp

    @cached_property
    def fusion(self) -> FusionConfig:
        """How dense and sparse rankings are fused: as the bundle was tuned, else the default."""
        return load_fusion(self.served.bundle.root)

    @property
    def can_rerank(self) -> bool:
        """Whether a re-ranker is configured (``SLIPWAY_RERANKER_PATH``) or the bundle has one."""
        return self.index_settings.reranker_path is not None or self.served.bundle.has_role(
            RERANKER_ROLE
        )

    @cached_property
    def reranker(self) -> Reranker | None:
        """The configured cross-encoder, else the bundle's (served with its embedder and the
        index that embedder built), loaded once for every searcher and index version."""
        return configured_reranker(self.index_settings.reranker_path, self.served.bundle)

    # --- the graph ---------------------------------------------------------------------

    def graph(self) -> Any:
        """:class:`~slipway.graph.GraphQueries` on the configured graph server (never starts
        the embedded one: ``slipway graph start`` does); 503 when there is none."""
        with self._graph_lock:
            if self._graph is None:
                from slipway.graph import GraphQueries, connect
                from slipway.graph.server import running_server

                settings = GraphSettings()
                if not settings.neo4j_uri and running_server(settings) is None:
                    raise ApiError(
                        503,
                        "No knowledge graph: set SLIPWAY_NEO4J_URI or start the "
                        "embedded server with `slipway graph start`.",
                        type="server_error",
                        code="graph_unavailable",
                    )
                try:
                    self._graph = GraphQueries(connect(settings))
                except (RuntimeError, OSError) as exc:
                    raise ApiError(
                        503,
                        f"The knowledge graph is unavailable: {exc}",
                        type="server_error",
                        code="graph_unavailable",
                    ) from exc
            return self._graph

    # --- cache, tokens, tracing --------------------------------------------------------

    def versions(self, index: IndexState | None = None) -> dict[str, str]:
        """What a cached result depends on: the model, and the index version it searched."""
        out = {"model": self.model_id}
        if index is not None:
            out["index"] = index.opened.version
        return out

    def cached(self, kind: str, versions: dict[str, str], payload: Any) -> tuple[str, Any | None]:
        """The cache key and the cached value (None on a miss or with the cache off)."""
        if self.cache is None:
            return "", None
        key = cache_key(kind, versions, payload)
        value = self.cache.get(key)
        metrics.cache_event(kind, value is not None)
        return key, value

    def remember(self, key: str, value: Any) -> None:
        """Store a result under a key from :meth:`cached`."""
        if self.cache is not None and key:
            self.cache.put(key, value)

    async def generator_info(self) -> dict[str, Any]:
        """What the generator is and can do (its ``describe``), asked once."""
        if self._generator_info is None:
            self._generator_info = dict(await self.generator.describe())
        return self._generator_info

    @cached_property
    def embed_window(self) -> int:
        """Most tokens the embedder reads of a text (longer ones are truncated)."""
        from slipway.embedding import PoolingConfig

        return PoolingConfig.from_model_dir(self.served.bundle.role_dir("embedder")).max_length

    def reader(self, principal: Principal) -> Reader:
        """Whom ``principal`` reads documents as, under the configured default."""
        return Reader(principal.principals, self.serve.acl_default)

    def embed_tokens(self, texts: Sequence[str]) -> int:
        """Encoder tokens of ``texts`` (special tokens included, as the encoder sees them)."""
        return sum(len(e.ids) for e in self.embed_tokenizer.encode_batch(list(texts)))

    def gen_tokens(self, text: str) -> int:
        """Generator tokens of ``text``."""
        return len(self.gen_tokenizer.encode(text, add_special_tokens=False).ids)


def build_resources(
    served: ServedBundle,
    embedder: EmbedClient,
    generator: GenerateClient,
    serve: ServeSettings | None = None,
    api: ApiSettings | None = None,
    index: IndexSettings | None = None,
) -> Resources:
    """The resources of one API worker over ``served`` and its model clients; settings
    default to the environment's."""
    return Resources(
        served,
        embedder,
        generator,
        serve or ServeSettings(),
        api or ApiSettings(),
        index or IndexSettings(),
    )


def manifest_brief(manifest: dict[str, Any], role: str) -> dict[str, Any]:
    """Precision, runtime and origin of one model of a bundle."""
    info = manifest["models"][role]
    return {
        "precision": info.get("precision"),
        "runtime": info["config"].get("runtime"),
        "source": info["source"].get(f"{role}_origin"),
    }
