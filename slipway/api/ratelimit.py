"""Per-key rate limits: two token buckets per key, requests per minute and tokens per minute.
A request passes only when both buckets hold enough; then both are charged at once. In-process
for one worker; Redis (one Lua script, so check-and-charge is atomic) for several workers or
replicas."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class Limits:
    """A key's budget per minute; ``None`` means unlimited."""

    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None


@dataclass(frozen=True)
class Decision:
    """The outcome, with what the ``RateLimit-*`` and ``Retry-After`` headers report."""

    allowed: bool
    limit: int  # requests per minute (0 = unlimited)
    remaining: int  # whole requests left in the bucket
    reset_seconds: float  # until the request bucket is full again
    retry_after: float  # seconds until this request would pass (0 when allowed)

    def headers(self) -> dict[str, str]:
        """RateLimit-Limit/-Remaining/-Reset, and Retry-After when refused."""
        out = {
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(math.ceil(self.reset_seconds)),
        }
        if not self.allowed:
            out["Retry-After"] = str(max(1, math.ceil(self.retry_after)))
        return out


class RateLimiter(Protocol):
    """Charges a request (and its tokens) to a key, or refuses it."""

    def acquire(self, key: str, limits: Limits, tokens: int = 0) -> Decision: ...


def _bucket(level: float, stamp: float, capacity: float, now: float) -> float:
    """The bucket's level at ``now``: refilled at ``capacity`` per minute, capped."""
    return min(capacity, level + (now - stamp) * capacity / 60.0)


def _wait(level: float, cost: float, capacity: float) -> float:
    """Seconds until a bucket at ``level`` holds ``cost``."""
    return max(0.0, (cost - level) * 60.0 / capacity)


class MemoryRateLimiter:
    """Token buckets in this process (one worker)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        self._buckets: dict[tuple[str, str], tuple[float, float]] = {}

    def acquire(self, key: str, limits: Limits, tokens: int = 0) -> Decision:
        """Check both buckets and charge them together, or refuse."""
        with self._lock:
            now = self.clock()
            levels: dict[str, tuple[float, float, float]] = {}
            for kind, limit, cost in (
                ("req", limits.requests_per_minute, 1),
                ("tok", limits.tokens_per_minute, tokens),
            ):
                if limit:
                    capacity = float(limit)
                    level, stamp = self._buckets.get((key, kind), (capacity, now))
                    levels[kind] = (_bucket(level, stamp, capacity, now), capacity, float(cost))
            wait = max(
                (
                    _wait(lv, cost, cap)
                    for lv, cap, cost in levels.values()
                    if cost > cap or lv < cost
                ),
                default=0.0,
            )
            too_big = any(cost > cap for _, cap, cost in levels.values())
            allowed = wait == 0.0 and not too_big
            for kind, (lv, _, charge) in levels.items():
                self._buckets[(key, kind)] = (lv - charge if allowed else lv, now)
            return _decision(allowed, levels.get("req"), wait, too_big)


def _decision(
    allowed: bool, req: tuple[float, float, float] | None, wait: float, too_big: bool
) -> Decision:
    if req is None:
        return Decision(allowed, 0, 0, 0.0, 0.0 if allowed else (3600.0 if too_big else wait))
    level, capacity, cost = req
    left = level - cost if allowed else level
    return Decision(
        allowed,
        int(capacity),
        max(0, math.floor(left)),
        (capacity - left) * 60.0 / capacity,
        0.0 if allowed else (3600.0 if too_big else wait),
    )


# KEYS: request bucket, token bucket. ARGV: request capacity, token capacity, token cost
# (capacity 0 = unlimited). Buckets are hashes {level, stamp}; time is the server's.
_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local caps = {tonumber(ARGV[1]), tonumber(ARGV[2])}
local costs = {1, tonumber(ARGV[3])}
local levels = {}
local wait = 0
local too_big = 0
for i = 1, 2 do
  local cap = caps[i]
  if cap > 0 then
    local b = redis.call('HMGET', KEYS[i], 'level', 'stamp')
    local level = tonumber(b[1]) or cap
    local stamp = tonumber(b[2]) or now
    level = math.min(cap, level + (now - stamp) * cap / 60.0)
    levels[i] = level
    if costs[i] > cap then too_big = 1
    elseif level < costs[i] then wait = math.max(wait, (costs[i] - level) * 60.0 / cap) end
  end
end
local allowed = (wait == 0 and too_big == 0) and 1 or 0
for i = 1, 2 do
  if caps[i] > 0 then
    local level = levels[i]
    if allowed == 1 then level = level - costs[i] end
    redis.call('HSET', KEYS[i], 'level', tostring(level), 'stamp', tostring(now))
    redis.call('EXPIRE', KEYS[i], 120)
    levels[i] = level
  end
end
return {allowed, tostring(levels[1] or -1), tostring(wait), too_big}
"""


class RedisRateLimiter:
    """Token buckets in Redis or Valkey, shared by every worker and replica; the check and the
    charge are one Lua script, so concurrent requests cannot both spend the last token."""

    def __init__(self, client: Any, prefix: str = "slipway:rl:") -> None:
        self.client = client
        self.prefix = prefix
        self._script = client.register_script(_LUA)

    def acquire(self, key: str, limits: Limits, tokens: int = 0) -> Decision:
        """Check both buckets and charge them together, or refuse."""
        rpm, tpm = limits.requests_per_minute or 0, limits.tokens_per_minute or 0
        allowed, level, wait, too_big = self._script(
            keys=[f"{self.prefix}{key}:req", f"{self.prefix}{key}:tok"], args=[rpm, tpm, tokens]
        )
        req = (float(level) + (1 if int(allowed) else 0), float(rpm), 1) if rpm else None
        return _decision(bool(int(allowed)), req, float(wait), bool(int(too_big)))
