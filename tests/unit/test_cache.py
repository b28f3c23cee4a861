"""Result caches: version-scoped keys, TTL, LRU bound; in process and in a real Valkey."""

from __future__ import annotations

import time

import pytest

from slipway.cache import MemoryCache, RedisCache, cache_key


def test_keys_depend_on_versions_and_payload_not_key_order() -> None:
    v1 = {"model": "3", "index": "v000002"}
    a = cache_key("embed", v1, {"texts": ["x"], "normalize": True})
    assert a == cache_key(
        "embed", dict(reversed(list(v1.items()))), {"normalize": True, "texts": ["x"]}
    )
    assert a != cache_key("embed", {**v1, "model": "4"}, {"texts": ["x"], "normalize": True})
    assert a != cache_key("embed", {**v1, "index": "v000003"}, {"texts": ["x"], "normalize": True})
    assert a != cache_key("search", v1, {"texts": ["x"], "normalize": True})
    assert a.startswith("embed:")


def test_memory_cache_ttl_lru_and_counters() -> None:
    now = [0.0]
    cache = MemoryCache(max_entries=2, ttl_seconds=10, clock=lambda: now[0])
    cache.put("a", [1.0])
    cache.put("b", {"x": 1})
    assert cache.get("a") == [1.0]  # a is now the most recent
    cache.put("c", "z")  # evicts b, the least recently used
    assert cache.get("b") is None and cache.get("c") == "z" and len(cache) == 2
    now[0] = 10.0
    assert cache.get("a") is None  # expired
    assert (cache.hits, cache.misses) == (2, 2)
    with pytest.raises(ValueError):
        MemoryCache(max_entries=0)


def test_memory_cache_is_bounded_in_bytes_and_returns_json() -> None:
    cache = MemoryCache(max_entries=100, max_bytes=100)
    cache.put("a", {"v": [0.5] * 10})  # 47 bytes of JSON
    cache.put("b", {"v": [0.25] * 10})  # 57: a goes to stay within 100
    assert cache.get("a") is None and cache.get("b") == {"v": [0.25] * 10}
    assert cache.bytes == len('{"v":[' + ",".join(["0.25"] * 10) + "]}")
    cache.put("b", "short")  # replacing an entry releases its bytes
    assert cache.bytes == len('"short"') and len(cache) == 1
    cache.put("huge", "x" * 200)  # larger than the whole bound: not cached, nothing evicted
    assert cache.get("huge") is None and cache.get("b") == "short"
    cache.put("t", (1, 2))  # what a JSON round trip gives, as from Redis
    assert cache.get("t") == [1, 2]


def test_redis_cache_round_trip_and_ttl(valkey_server_url: str) -> None:
    import redis

    client = redis.Redis.from_url(valkey_server_url)
    cache = RedisCache(client, ttl_seconds=1, prefix="test:cache:")
    key = cache_key("generate", {"model": "1"}, {"prompt": "hi", "max_new_tokens": 8})
    assert cache.get(key) is None
    cache.put(key, {"text": "hello", "tokens": [1, 2]})
    assert cache.get(key) == {"text": "hello", "tokens": [1, 2]}
    assert 0 < client.ttl("test:cache:" + key) <= 1
    time.sleep(1.2)
    assert cache.get(key) is None
    assert (cache.hits, cache.misses) == (1, 2)
