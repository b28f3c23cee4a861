"""Usage, cost and budgets per key account: what each call used (per account and model, per
UTC day and calendar month), and budgets reserved before a call with one atomic check-and-add,
then settled to the real usage. A SQLite file shared by a host's workers (WAL, one transaction
per check-and-add) or Redis/Valkey (one Lua script) for replicas."""

from __future__ import annotations

import logging
import math
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from slipway.api.keys import Budget

# the bounds a budget checks, in the order a refusal names the first one exceeded
BOUNDS = (
    ("tokens", "day", "tokens_per_day"),
    ("tokens", "month", "tokens_per_month"),
    ("cost", "day", "cost_per_day"),
    ("cost", "month", "cost_per_month"),
)


def periods(now: datetime) -> tuple[str, str]:
    """The UTC day and month ``now`` falls in: ``d:2026-05-03``, ``m:2026-05``."""
    now = now.astimezone(UTC)
    return f"d:{now:%Y-%m-%d}", f"m:{now:%Y-%m}"


def period_end(period: str) -> datetime:
    """When a period ends (its bounds reset): the next UTC midnight or first of a month."""
    kind, _, stamp = period.partition(":")
    if kind == "d":
        return datetime.strptime(stamp, "%Y-%m-%d").replace(tzinfo=UTC) + timedelta(days=1)
    start = datetime.strptime(stamp, "%Y-%m").replace(tzinfo=UTC)
    return (start + timedelta(days=32)).replace(day=1)


@dataclass(frozen=True)
class Reservation:
    """What a call reserved of its account's budget (settled once it ends)."""

    account: str
    day: str
    month: str
    tokens: int
    cost: float


@dataclass(frozen=True)
class Refusal:
    """A budget bound the call would exceed: which, its limit, and when it resets."""

    measure: str  # tokens | cost
    period: str  # day | month
    limit: float
    used: float
    resets_at: datetime

    def retry_after(self, now: datetime) -> int:
        """Whole seconds until the bound resets."""
        return max(1, math.ceil((self.resets_at - now).total_seconds()))

    def message(self, asked: float) -> str:
        """What a client reads."""
        unit = "tokens" if self.measure == "tokens" else "cost"
        amount = f"{int(asked)}" if self.measure == "tokens" else f"{asked:.6g}"
        return (
            f"Budget exceeded: this key's {unit} per {self.period} is {self.limit:g} "
            f"({self.used:g} used, {amount} more asked); it resets at "
            f"{self.resets_at.isoformat().replace('+00:00', 'Z')}."
        )


@dataclass(frozen=True, order=True)
class UsageRow:
    """An account's usage of one model in one period."""

    account: str
    model: str
    period: str
    requests: int
    tokens_in: int
    tokens_out: int
    cost: float


@dataclass(frozen=True)
class Totals:
    """What an account spent (and holds reserved) in a period, all models together."""

    tokens: int
    cost: float


class UsageStore(Protocol):
    """Where usage is counted and budgets are checked."""

    def reserve(
        self, account: str, budget: Budget, tokens: int, cost: float, now: datetime
    ) -> Reservation | Refusal: ...

    def settle(
        self,
        reservation: Reservation,
        model: str,
        tokens_in: int,
        tokens_out: int,
        cost: float,
    ) -> None: ...

    def rows(self, period: str, account: str | None = None) -> list[UsageRow]: ...

    def totals(self, account: str, period: str) -> Totals: ...


# a bound is passed only beyond this factor of it: a hundred calls of 0.01 spend 1.0, not
# 1.0000000000000007 (floating-point sums)
SLACK = 1 + 1e-9


def _limits(budget: Budget) -> list[float]:
    return [float(getattr(budget, name) or 0) for _, _, name in BOUNDS]


def _refusal(index: int, budget: Budget, used: float, day: str, month: str) -> Refusal:
    measure, period, name = BOUNDS[index]
    return Refusal(
        measure,
        period,
        float(getattr(budget, name)),
        used,
        period_end(day if period == "day" else month),
    )


def unreserved(account: str, now: datetime) -> Reservation:
    """The reservation of a call whose account has no budget (nothing held)."""
    day, month = periods(now)
    return Reservation(account, day, month, 0, 0.0)


def budget_left(store: UsageStore, account: str, budget: Budget, now: datetime) -> dict[str, float]:
    """What each bound of ``budget`` has left now (``tokens_per_day``: 1200, ...)."""
    day, month = periods(now)
    totals = {"day": store.totals(account, day), "month": store.totals(account, month)}
    left = {}
    for measure, period, name in BOUNDS:
        limit = getattr(budget, name)
        if limit is not None:
            spent = getattr(totals[period], measure)
            left[name] = max(0.0, float(limit) - spent)
    return left


# --- the embedded store: SQLite ------------------------------------------------------------

_SCHEMA = """
CREATE TABLE IF NOT EXISTS totals (
  account TEXT NOT NULL, period TEXT NOT NULL,
  tokens INTEGER NOT NULL DEFAULT 0, cost REAL NOT NULL DEFAULT 0,
  PRIMARY KEY (account, period));
CREATE TABLE IF NOT EXISTS usage (
  account TEXT NOT NULL, model TEXT NOT NULL, period TEXT NOT NULL,
  requests INTEGER NOT NULL DEFAULT 0, tokens_in INTEGER NOT NULL DEFAULT 0,
  tokens_out INTEGER NOT NULL DEFAULT 0, cost REAL NOT NULL DEFAULT 0,
  PRIMARY KEY (account, model, period));
"""
_ADD_TOTAL = """
INSERT INTO totals (account, period, tokens, cost) VALUES (?, ?, ?, ?)
ON CONFLICT (account, period) DO UPDATE SET
  tokens = tokens + excluded.tokens, cost = cost + excluded.cost
"""
_ADD_USAGE = """
INSERT INTO usage (account, model, period, requests, tokens_in, tokens_out, cost)
VALUES (?, ?, ?, 1, ?, ?, ?)
ON CONFLICT (account, model, period) DO UPDATE SET
  requests = requests + 1, tokens_in = tokens_in + excluded.tokens_in,
  tokens_out = tokens_out + excluded.tokens_out, cost = cost + excluded.cost
"""
KEEP_DAYS = 62  # day rows older than this are deleted (month rows stay: they are few)


class FileUsageStore:
    """Usage in a SQLite file (WAL): each check-and-add is one ``BEGIN IMMEDIATE``
    transaction, so workers and processes of one host never both spend the last token."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._db().executescript(_SCHEMA)  # (its own transaction)
        with self._tx() as db:
            cutoff = datetime.now(UTC) - timedelta(days=KEEP_DAYS)
            for table in ("totals", "usage"):
                db.execute(
                    f"DELETE FROM {table} WHERE period LIKE 'd:%' AND period < ?",
                    (f"d:{cutoff:%Y-%m-%d}",),
                )

    def _db(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            self._local.db = db
        return db

    def _tx(self) -> _Transaction:
        return _Transaction(self._db())

    def reserve(
        self, account: str, budget: Budget, tokens: int, cost: float, now: datetime
    ) -> Reservation | Refusal:
        """Add ``tokens`` and ``cost`` to the account's day and month unless a bound of
        ``budget`` would be exceeded (then nothing is added)."""
        day, month = periods(now)
        limits = _limits(budget)
        with self._tx() as db:
            used = {
                period: db.execute(
                    "SELECT tokens, cost FROM totals WHERE account = ? AND period = ?",
                    (account, period),
                ).fetchone()
                or (0, 0.0)
                for period in (day, month)
            }
            for i, (measure, period, _) in enumerate(BOUNDS):
                have = used[day if period == "day" else month][0 if measure == "tokens" else 1]
                add = tokens if measure == "tokens" else cost
                if limits[i] and have + add > limits[i] * SLACK:
                    return _refusal(i, budget, have, day, month)
            for period in (day, month):
                db.execute(_ADD_TOTAL, (account, period, tokens, cost))
        return Reservation(account, day, month, tokens, cost)

    def settle(
        self,
        reservation: Reservation,
        model: str,
        tokens_in: int,
        tokens_out: int,
        cost: float,
    ) -> None:
        """Replace the reservation by the real usage, and count it for ``model`` (none: a
        call no model answered, only its reservation given back)."""
        r = reservation
        with self._tx() as db:
            for period in (r.day, r.month):
                db.execute(
                    _ADD_TOTAL,
                    (r.account, period, tokens_in + tokens_out - r.tokens, cost - r.cost),
                )
                if model:
                    db.execute(_ADD_USAGE, (r.account, model, period, tokens_in, tokens_out, cost))

    def rows(self, period: str, account: str | None = None) -> list[UsageRow]:
        """Usage in ``period`` by account and model (of one account when given)."""
        query = (
            "SELECT account, model, period, requests, tokens_in, tokens_out, cost FROM usage "
            "WHERE period = ?" + (" AND account = ?" if account else "")
        )
        args = (period, account) if account else (period,)
        return sorted(UsageRow(*row) for row in self._db().execute(query, args).fetchall())

    def totals(self, account: str, period: str) -> Totals:
        """What ``account`` spent and holds reserved in ``period``."""
        row = (
            self._db()
            .execute(
                "SELECT tokens, cost FROM totals WHERE account = ? AND period = ?",
                (account, period),
            )
            .fetchone()
        )
        return Totals(int(row[0]), float(row[1])) if row else Totals(0, 0.0)


class _Transaction:
    """``BEGIN IMMEDIATE`` (the write lock first: two check-and-adds never interleave) ...
    ``COMMIT``, or ``ROLLBACK`` on an error."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> sqlite3.Connection:
        self.db.execute("BEGIN IMMEDIATE")
        return self.db

    def __exit__(self, kind: object, *_: object) -> None:
        self.db.execute("ROLLBACK" if kind is not None else "COMMIT")


# --- Redis / Valkey ------------------------------------------------------------------------

# KEYS: the account's day and month totals (hashes {tokens, cost}). ARGV: tokens, cost, the
# four limits (0 = none, in BOUNDS order), the Unix times the day and month end, SLACK.
_RESERVE = """
local add = {tonumber(ARGV[1]), tonumber(ARGV[2])}
local used = {}
for p = 1, 2 do
  local v = redis.call('HMGET', KEYS[p], 'tokens', 'cost')
  used[p] = {tonumber(v[1]) or 0, tonumber(v[2]) or 0}
end
local bounds = {{1, 1}, {1, 2}, {2, 1}, {2, 2}}  -- {measure, period}
for i = 1, 4 do
  local limit = tonumber(ARGV[2 + i])
  local m, p = bounds[i][1], bounds[i][2]
  if limit > 0 and used[p][m] + add[m] > limit * tonumber(ARGV[9]) then
    return {i, tostring(used[p][m])}
  end
end
for p = 1, 2 do
  redis.call('HINCRBY', KEYS[p], 'tokens', add[1])
  redis.call('HINCRBYFLOAT', KEYS[p], 'cost', add[2])
  redis.call('EXPIREAT', KEYS[p], tonumber(ARGV[6 + p]))
end
return {0, '0'}
"""
GRACE_S = 86_400  # keys outlive their period by a day, so yesterday's usage can be read


class RedisUsageStore:
    """Usage in Redis or Valkey, shared by every worker and replica: the check-and-add is one
    Lua script; keys expire a day after their period ends."""

    def __init__(self, client: Any, prefix: str = "slipway:") -> None:
        self.client = client
        self.prefix = prefix
        self._reserve = client.register_script(_RESERVE)

    def _totals_key(self, account: str, period: str) -> str:
        return f"{self.prefix}budget:{period}:{account}"

    def _usage_key(self, account: str, period: str) -> str:
        return f"{self.prefix}usage:{period}:{account}"

    @staticmethod
    def _expiry(period: str) -> int:
        return int(period_end(period).timestamp()) + GRACE_S

    def reserve(
        self, account: str, budget: Budget, tokens: int, cost: float, now: datetime
    ) -> Reservation | Refusal:
        """Add ``tokens`` and ``cost`` to the account's day and month unless a bound of
        ``budget`` would be exceeded (one script: atomic across replicas)."""
        day, month = periods(now)
        index, used = self._reserve(
            keys=[self._totals_key(account, day), self._totals_key(account, month)],
            args=[
                tokens,
                repr(cost),
                *_limits(budget),
                self._expiry(day),
                self._expiry(month),
                repr(SLACK),
            ],
        )
        if int(index):
            return _refusal(int(index) - 1, budget, float(used), day, month)
        return Reservation(account, day, month, tokens, cost)

    def settle(
        self,
        reservation: Reservation,
        model: str,
        tokens_in: int,
        tokens_out: int,
        cost: float,
    ) -> None:
        """Replace the reservation by the real usage, and count it for ``model`` (none: a
        call no model answered, only its reservation given back)."""
        r = reservation
        pipe = self.client.pipeline(transaction=True)
        for period in (r.day, r.month):
            totals, usage = self._totals_key(r.account, period), self._usage_key(r.account, period)
            pipe.hincrby(totals, "tokens", tokens_in + tokens_out - r.tokens)
            pipe.hincrbyfloat(totals, "cost", cost - r.cost)
            pipe.expireat(totals, self._expiry(period))
            if model:
                pipe.hincrby(usage, f"{model}\x1frequests", 1)
                pipe.hincrby(usage, f"{model}\x1ftokens_in", tokens_in)
                pipe.hincrby(usage, f"{model}\x1ftokens_out", tokens_out)
                pipe.hincrbyfloat(usage, f"{model}\x1fcost", cost)
                pipe.expireat(usage, self._expiry(period))
        pipe.execute()

    def rows(self, period: str, account: str | None = None) -> list[UsageRow]:
        """Usage in ``period`` by account and model (of one account when given)."""
        if account:
            keys = [self._usage_key(account, period)]
        else:
            keys = [k.decode() for k in self.client.scan_iter(self._usage_key("*", period))]
        out = []
        start = len(self._usage_key("", period))
        for key in keys:
            fields: dict[str, dict[str, float]] = {}
            for name, value in self.client.hgetall(key).items():
                model, _, what = name.decode().partition("\x1f")
                fields.setdefault(model, {})[what] = float(value)
            for model, f in fields.items():
                out.append(
                    UsageRow(
                        key[start:],
                        model,
                        period,
                        int(f.get("requests", 0)),
                        int(f.get("tokens_in", 0)),
                        int(f.get("tokens_out", 0)),
                        f.get("cost", 0.0),
                    )
                )
        return sorted(out)

    def totals(self, account: str, period: str) -> Totals:
        """What ``account`` spent and holds reserved in ``period``."""
        tokens, cost = self.client.hmget(self._totals_key(account, period), "tokens", "cost")
        return Totals(int(tokens or 0), float(cost or 0.0))


def usage_store(backend: str, path: Path, redis: Callable[[], Any]) -> UsageStore:
    """The configured store: ``file`` at ``path``, or ``redis`` on the client ``redis()``."""
    if backend == "redis":
        return RedisUsageStore(redis())
    return FileUsageStore(path)


# --- recording off the event loop ----------------------------------------------------------

Observe = Callable[[str, str, int, int, float], None]


class UsageRecorder:
    """Settles calls in a thread of its own: a request or stream never waits for the store.
    ``observe`` (account, model, tokens in, out, cost) also runs there (metrics)."""

    def __init__(self, store: UsageStore, observe: Observe | None = None) -> None:
        self.store = store
        self.observe = observe
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="slipway-usage")

    def record(
        self, reservation: Reservation, model: str, tokens_in: int, tokens_out: int, cost: float
    ) -> None:
        """Settle ``reservation`` to the real usage, in the background."""
        self._pool.submit(self._settle, reservation, model, tokens_in, tokens_out, cost)

    def _settle(
        self, reservation: Reservation, model: str, tokens_in: int, tokens_out: int, cost: float
    ) -> None:
        try:
            self.store.settle(reservation, model, tokens_in, tokens_out, cost)
            if self.observe is not None and model:
                self.observe(reservation.account, model, tokens_in, tokens_out, cost)
        except Exception:  # a lost record must not take the worker down
            logging.getLogger(__name__).exception("Could not record usage of %s", model)

    def flush(self) -> None:
        """Wait for every record submitted so far (tests, shutdown)."""
        self._pool.submit(lambda: None).result()
