"""Rate limits: token buckets in process (fake clock) and in a real Valkey server (Lua)."""

from __future__ import annotations

import threading

import pytest

from slipway.api.ratelimit import Limits, MemoryRateLimiter, RedisRateLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_requests_per_minute_refill_and_headers() -> None:
    clock = Clock()
    limiter = MemoryRateLimiter(clock)
    limits = Limits(requests_per_minute=3)
    decisions = [limiter.acquire("k", limits) for _ in range(4)]
    assert [d.allowed for d in decisions] == [True, True, True, False]
    refused = decisions[-1]
    assert refused.retry_after == pytest.approx(20.0)  # one request refills in 60/3 s
    headers = refused.headers()
    assert headers["Retry-After"] == "20" and headers["RateLimit-Limit"] == "3"
    assert headers["RateLimit-Remaining"] == "0"
    assert "Retry-After" not in decisions[0].headers()
    clock.now += 20.0
    assert limiter.acquire("k", limits).allowed
    assert not limiter.acquire("k", limits).allowed
    assert limiter.acquire("other", limits).allowed  # keys are independent


def test_tokens_per_minute_refuse_without_charging_requests() -> None:
    clock = Clock()
    limiter = MemoryRateLimiter(clock)
    limits = Limits(requests_per_minute=100, tokens_per_minute=1000)
    assert limiter.acquire("k", limits, tokens=900).allowed
    refused = limiter.acquire("k", limits, tokens=200)
    assert not refused.allowed and refused.retry_after == pytest.approx(6.0)
    assert refused.remaining == 99  # the refused request was not charged
    assert not limiter.acquire("k", limits, tokens=5000).allowed  # can never fit
    assert limiter.acquire("k", Limits()).allowed  # unlimited


def test_memory_limiter_is_exact_under_threads() -> None:
    limiter = MemoryRateLimiter()
    limits = Limits(requests_per_minute=50)
    allowed = []

    def hammer() -> None:
        for _ in range(20):
            allowed.append(limiter.acquire("k", limits).allowed)

    threads = [threading.Thread(target=hammer) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(allowed) == 50


@pytest.fixture
def redis_url(valkey_server_url: str) -> str:
    return valkey_server_url


def test_redis_limiter_matches_the_buckets(redis_url: str) -> None:
    import redis

    limiter = RedisRateLimiter(redis.Redis.from_url(redis_url), prefix="t1:")
    limits = Limits(requests_per_minute=3, tokens_per_minute=100)
    decisions = [limiter.acquire("k", limits, tokens=10) for _ in range(4)]
    assert [d.allowed for d in decisions] == [True, True, True, False]
    assert decisions[0].remaining == 2 and decisions[-1].retry_after > 15
    assert decisions[-1].headers()["Retry-After"] in {"19", "20"}
    assert not limiter.acquire("j", limits, tokens=500).allowed
    assert limiter.acquire("j", limits, tokens=50).allowed


def test_redis_limiter_is_atomic_across_clients(redis_url: str) -> None:
    import redis

    limits = Limits(requests_per_minute=40)
    allowed = []

    def worker() -> None:
        client = redis.Redis.from_url(redis_url)
        limiter = RedisRateLimiter(client, prefix="t2:")
        for _ in range(25):
            allowed.append(limiter.acquire("shared", limits).allowed)
        client.close()

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(allowed) == 40  # 150 attempts, exactly the bucket's 40 pass
