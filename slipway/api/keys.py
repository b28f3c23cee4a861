"""API keys: issued once, stored only as SHA-256 digests, with scopes, expiry, per-key limits
and rotation with an overlap window. The embedded store is a JSON file (mode 0600, atomic
writes, a file lock); several replicas share a Redis (or Valkey) hash instead."""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import os
import re
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel, Field

PREFIX = "sk-slipway-"
_TOKEN = re.compile(rf"^{PREFIX}([0-9a-f]{{12}})\.([A-Za-z0-9_-]{{43}})$")
_DURATION = re.compile(r"^(\d+)([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


class Scope(StrEnum):
    """What a key may call."""

    EMBED = "embed"
    GENERATE = "generate"
    SEARCH = "search"
    FEEDBACK = "feedback"
    ADMIN = "admin"


class Budget(BaseModel):
    """What a key may spend per UTC day and calendar month (``None``: no bound): tokens in and
    out together, and cost in the models' price unit (the configured price per million)."""

    tokens_per_day: int | None = Field(default=None, ge=1)
    tokens_per_month: int | None = Field(default=None, ge=1)
    cost_per_day: float | None = Field(default=None, gt=0)
    cost_per_month: float | None = Field(default=None, gt=0)

    def bounded(self) -> bool:
        """Whether any bound is set."""
        return any(v is not None for v in self.model_dump().values())


class KeyRecord(BaseModel):
    """A stored key: never the secret itself, only its digest."""

    id: str
    name: str
    digest: str
    scopes: list[Scope]
    created_at: datetime
    expires_at: datetime | None = None
    revoked_at: datetime | None = None
    rotated_to: str | None = None
    requests_per_minute: int | None = Field(default=None, ge=1)
    tokens_per_minute: int | None = Field(default=None, ge=1)
    principals: list[str] = Field(
        default_factory=list,
        description="Who the caller is for document access control (users, groups); "
        "'*' reads every document.",
    )
    models: list[str] | None = Field(
        default=None, description="Model ids the key may call; None: every served model."
    )
    budget: Budget | None = None
    account: str | None = Field(
        default=None,
        description="The key whose budget and usage this one continues (set on rotation).",
    )

    def status(self, now: datetime) -> str:
        """active, expired or revoked."""
        if self.revoked_at is not None and self.revoked_at <= now:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= now:
            return "expired"
        return "active"


class AuthError(Exception):
    """Missing, malformed, unknown, expired or revoked credentials (HTTP 401)."""


class ScopeError(Exception):
    """A valid key without the scope a route needs (HTTP 403)."""


class KeyStore(Protocol):
    """Where key records live."""

    def get(self, key_id: str) -> KeyRecord | None: ...

    def put(self, record: KeyRecord) -> None: ...

    def all(self) -> list[KeyRecord]: ...


def parse_duration(text: str) -> timedelta:
    """``90s``, ``15m``, ``12h``, ``30d`` or ``2w`` as a timedelta."""
    match = _DURATION.match(text.strip())
    if match is None:
        raise ValueError(
            f"{text!r} is not a duration: use a number and s, m, h, d or w (e.g. 30d)."
        )
    return timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})


def digest(token: str) -> str:
    """SHA-256 of a whole token (keys are 256-bit random, so a fast hash is enough)."""
    return hashlib.sha256(token.encode()).hexdigest()


def _now() -> datetime:
    return datetime.now(UTC)


def create_key(
    store: KeyStore,
    name: str,
    scopes: list[Scope],
    expires_in: timedelta | None = None,
    requests_per_minute: int | None = None,
    tokens_per_minute: int | None = None,
    now: datetime | None = None,
    principals: list[str] | None = None,
    models: list[str] | None = None,
    budget: Budget | None = None,
) -> tuple[str, KeyRecord]:
    """A new key: the token (shown once) and its stored record; ``principals`` name whom it
    reads documents as, ``models`` bound what it may call, ``budget`` what it may spend."""
    if not scopes:
        raise ValueError("A key needs at least one scope (embed, generate, search, admin).")
    now = now or _now()
    key_id = secrets.token_hex(6)
    token = f"{PREFIX}{key_id}.{secrets.token_urlsafe(32)}"
    record = KeyRecord(
        id=key_id,
        name=name,
        digest=digest(token),
        scopes=sorted(set(scopes)),
        created_at=now,
        expires_at=now + expires_in if expires_in else None,
        requests_per_minute=requests_per_minute,
        tokens_per_minute=tokens_per_minute,
        principals=sorted(set(principals or [])),
        models=sorted(set(models)) if models is not None else None,
        budget=budget if budget is not None and budget.bounded() else None,
    )
    store.put(record)
    return token, record


def verify(store: KeyStore, token: str | None, now: datetime | None = None) -> KeyRecord:
    """The record of a valid, active key; :class:`AuthError` otherwise. The digest comparison
    is constant-time; an unknown id costs a comparison too."""
    if not token:
        raise AuthError("No API key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'.")
    match = _TOKEN.match(token.strip())
    if match is None:
        raise AuthError("Malformed API key.")
    record = store.get(match.group(1))
    expected = record.digest if record is not None else digest("")
    if not hmac.compare_digest(expected, digest(token.strip())) or record is None:
        raise AuthError("Unknown API key.")
    state = record.status(now or _now())
    if state != "active":
        raise AuthError(f"API key {record.id} is {state}.")
    return record


def require_scope(record: KeyRecord, scope: Scope) -> None:
    """:class:`ScopeError` unless the key has ``scope`` (``admin`` has every scope)."""
    if scope not in record.scopes and Scope.ADMIN not in record.scopes:
        raise ScopeError(f"API key {record.id} lacks the {scope.value!r} scope.")


def revoke(store: KeyStore, key_id: str, now: datetime | None = None) -> KeyRecord:
    """Revoke a key at once."""
    record = _existing(store, key_id)
    record = record.model_copy(update={"revoked_at": now or _now()})
    store.put(record)
    return record


def rotate(
    store: KeyStore, key_id: str, overlap: timedelta, now: datetime | None = None
) -> tuple[str, KeyRecord]:
    """A new key with the old one's name, scopes and limits; the old key keeps working for
    ``overlap`` (so clients can switch), then expires."""
    now = now or _now()
    old = _existing(store, key_id)
    if old.status(now) != "active":
        raise ValueError(f"API key {key_id} is {old.status(now)}; create a new one instead.")
    remaining = old.expires_at - now if old.expires_at else None
    token, new = create_key(
        store,
        old.name,
        old.scopes,
        remaining,
        old.requests_per_minute,
        old.tokens_per_minute,
        now,
        old.principals,
        old.models,
        old.budget,
    )
    new = new.model_copy(update={"account": old.account or old.id})
    store.put(new)
    ends = now + overlap
    if old.expires_at is not None:
        ends = min(ends, old.expires_at)
    store.put(old.model_copy(update={"expires_at": ends, "rotated_to": new.id}))
    return token, new


def _existing(store: KeyStore, key_id: str) -> KeyRecord:
    record = store.get(key_id)
    if record is None:
        raise KeyError(f"No API key with id {key_id!r} (see `slipway keys list`).")
    return record


class FileKeyStore:
    """Key records in one JSON file: mode 0600, replaced atomically under a lock."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_suffix(".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _load(self) -> dict[str, KeyRecord]:
        if not self.path.is_file():
            return {}
        rows = json.loads(self.path.read_text())
        return {row["id"]: KeyRecord.model_validate(row) for row in rows}

    def get(self, key_id: str) -> KeyRecord | None:
        """One record by id."""
        return self._load().get(key_id)

    def all(self) -> list[KeyRecord]:
        """Every record, oldest first."""
        return sorted(self._load().values(), key=lambda r: r.created_at)

    def put(self, record: KeyRecord) -> None:
        """Insert or replace a record."""
        with self._locked():
            records = self._load()
            records[record.id] = record
            payload = json.dumps([r.model_dump(mode="json") for r in records.values()], indent=1)
            tmp = self.path.with_suffix(".tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(payload)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.path)


class RedisKeyStore:
    """Key records in one Redis hash (``<prefix>keys``: id -> record JSON), for replicas."""

    def __init__(self, client: Any, prefix: str = "slipway:") -> None:
        self.client = client
        self.name = f"{prefix}keys"

    def get(self, key_id: str) -> KeyRecord | None:
        """One record by id."""
        raw = self.client.hget(self.name, key_id)
        return KeyRecord.model_validate_json(raw) if raw else None

    def all(self) -> list[KeyRecord]:
        """Every record, oldest first."""
        rows = [KeyRecord.model_validate_json(raw) for raw in self.client.hvals(self.name)]
        return sorted(rows, key=lambda r: r.created_at)

    def put(self, record: KeyRecord) -> None:
        """Insert or replace a record."""
        self.client.hset(self.name, record.id, record.model_dump_json())


def key_store(backend: str, path: Path, redis_url: str | None) -> KeyStore:
    """The configured store: ``file`` at ``path``, or ``redis`` at ``redis_url``."""
    if backend == "redis":
        if not redis_url:
            raise ValueError(
                "SLIPWAY_KEY_STORE=redis needs SLIPWAY_REDIS_URL (e.g. redis://host:6379/0)."
            )
        import redis

        return RedisKeyStore(redis.Redis.from_url(redis_url))
    return FileKeyStore(path)
