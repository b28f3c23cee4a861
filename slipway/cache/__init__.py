"""Result caches for deterministic answers (embeddings, greedy generations, search results).

Keys include the model and index versions, so a new version never serves an old entry; each
entry has a TTL and the in-process cache is bounded in entries and in bytes (least recently
used goes first): it keeps values as compact JSON, as Redis does, so a hit returns what a JSON
round trip gives with either adapter. Redis (or Valkey) shares a cache between workers and
replicas, with the same keys.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Protocol


def cache_key(kind: str, versions: dict[str, str], payload: Any) -> str:
    """A key from the kind of result, the versions that produced it and the request (canonical
    JSON: the same request in any key order gives the same key)."""
    body = json.dumps(
        {"v": versions, "p": payload},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        default=str,
    )
    return f"{kind}:{hashlib.sha256(body.encode()).hexdigest()}"


class ResultCache(Protocol):
    """Get and put JSON-serialisable results by key."""

    def get(self, key: str) -> Any | None: ...

    def put(self, key: str, value: Any) -> None: ...


class MemoryCache:
    """In-process LRU cache with a TTL, safe across threads; counts hits and misses. Values are
    stored as compact JSON bytes: ``max_bytes`` bounds what the entries hold (a value larger
    than that is not cached)."""

    def __init__(
        self,
        max_entries: int = 10_000,
        ttl_seconds: float = 600.0,
        clock: Callable[[], float] = time.monotonic,
        max_bytes: int = 64 * 2**20,
    ) -> None:
        if max_entries < 1 or ttl_seconds <= 0 or max_bytes < 1:
            raise ValueError("max_entries and max_bytes must be >= 1 and ttl_seconds > 0.")
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.ttl = ttl_seconds
        self.clock = clock
        self.hits = 0
        self.misses = 0
        self.bytes = 0  # what the stored values hold
        self._lock = threading.Lock()
        self._items: OrderedDict[str, tuple[float, bytes]] = OrderedDict()

    def get(self, key: str) -> Any | None:
        """The value, or None when absent or expired."""
        with self._lock:
            item = self._items.get(key)
            if item is None or item[0] <= self.clock():
                if item is not None:
                    self._drop(key)
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            raw = item[1]
        return json.loads(raw)

    def put(self, key: str, value: Any) -> None:
        """Store a JSON value; the least recently used entries go while it is over a bound."""
        raw = json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
        if len(raw) > self.max_bytes:
            return
        with self._lock:
            if key in self._items:
                self._drop(key)
            self._items[key] = (self.clock() + self.ttl, raw)
            self.bytes += len(raw)
            while len(self._items) > self.max_entries or self.bytes > self.max_bytes:
                self._drop(next(iter(self._items)))

    def _drop(self, key: str) -> None:
        self.bytes -= len(self._items.pop(key)[1])

    def __len__(self) -> int:
        return len(self._items)


class RedisCache:
    """The same cache in Redis or Valkey: JSON values with a TTL (``SET ... EX``); the size
    bound is the server's ``maxmemory`` with an LRU policy."""

    def __init__(self, client: Any, ttl_seconds: int = 600, prefix: str = "slipway:cache:") -> None:
        self.client = client
        self.ttl = ttl_seconds
        self.prefix = prefix
        self.hits = 0
        self.misses = 0

    def get(self, key: str) -> Any | None:
        """The value, or None when absent or expired."""
        raw = self.client.get(self.prefix + key)
        if raw is None:
            self.misses += 1
            return None
        self.hits += 1
        return json.loads(raw)

    def put(self, key: str, value: Any) -> None:
        """Store a JSON value with the TTL."""
        self.client.set(self.prefix + key, json.dumps(value), ex=self.ttl)
