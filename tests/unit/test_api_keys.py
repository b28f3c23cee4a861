"""API keys: hashed storage, scopes, expiry, revocation and rotation with an overlap window."""

from __future__ import annotations

import json
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from slipway.api.keys import (
    AuthError,
    FileKeyStore,
    RedisKeyStore,
    Scope,
    ScopeError,
    create_key,
    key_store,
    parse_duration,
    require_scope,
    revoke,
    rotate,
    verify,
)

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)


@pytest.fixture(params=["file", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path):  # type: ignore[no-untyped-def]
    """Each test runs on the file store and on the Redis store (a real Valkey server)."""
    if request.param == "file":
        return FileKeyStore(tmp_path / "keys" / "api_keys.json")
    url = request.getfixturevalue("valkey_server_url")
    return _fresh_redis_store(url, tmp_path)


def _fresh_redis_store(url: str, tmp_path: Path) -> RedisKeyStore:
    import redis

    return RedisKeyStore(redis.Redis.from_url(url), prefix=f"test:{tmp_path.name}:")


def _stored_text(store) -> str:  # type: ignore[no-untyped-def]
    if isinstance(store, FileKeyStore):
        return store.path.read_text()
    return "".join(v.decode() for v in store.client.hvals(store.name))


def test_keys_are_stored_hashed_and_verified(store) -> None:  # type: ignore[no-untyped-def]
    token, record = create_key(store, "ci", [Scope.EMBED, Scope.SEARCH], now=NOW)
    assert token.startswith("sk-slipway-") and record.id in token
    raw = _stored_text(store)
    assert record.digest in raw
    assert token not in raw and token.split(".")[1] not in raw  # only the digest is stored
    if isinstance(store, FileKeyStore):
        assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    assert verify(store, token, NOW).id == record.id
    assert verify(store, f"  {token} ", NOW).id == record.id


@pytest.mark.parametrize(
    "bad", [None, "", "Bearer x", "sk-slipway-zz.y", "sk-slipway-0123456789ab." + "A" * 43]
)
def test_missing_malformed_and_unknown_keys_are_refused(store, bad: str | None) -> None:  # type: ignore[no-untyped-def]
    create_key(store, "ci", [Scope.EMBED], now=NOW)
    with pytest.raises(AuthError):
        verify(store, bad, NOW)


def test_a_tampered_secret_is_refused(store) -> None:  # type: ignore[no-untyped-def]
    token, _ = create_key(store, "ci", [Scope.EMBED], now=NOW)
    tampered = token[:-1] + ("A" if token[-1] != "A" else "B")
    with pytest.raises(AuthError, match="Unknown"):
        verify(store, tampered, NOW)


def test_scopes_and_admin(store) -> None:  # type: ignore[no-untyped-def]
    _, reader = create_key(store, "reader", [Scope.SEARCH], now=NOW)
    _, admin = create_key(store, "admin", [Scope.ADMIN], now=NOW)
    require_scope(reader, Scope.SEARCH)
    with pytest.raises(ScopeError, match="generate"):
        require_scope(reader, Scope.GENERATE)
    require_scope(admin, Scope.GENERATE)
    with pytest.raises(ValueError, match="scope"):
        create_key(store, "none", [], now=NOW)


def test_expiry_and_revocation(store) -> None:  # type: ignore[no-untyped-def]
    token, record = create_key(store, "temp", [Scope.EMBED], expires_in=timedelta(hours=1), now=NOW)
    assert verify(store, token, NOW + timedelta(minutes=59)).id == record.id
    with pytest.raises(AuthError, match="expired"):
        verify(store, token, NOW + timedelta(hours=1))
    other, rec2 = create_key(store, "gone", [Scope.EMBED], now=NOW)
    revoke(store, rec2.id, now=NOW)
    with pytest.raises(AuthError, match="revoked"):
        verify(store, other, NOW)
    with pytest.raises(KeyError, match="slipway keys list"):
        revoke(store, "000000000000")


def test_rotation_keeps_the_old_key_for_the_overlap(store) -> None:  # type: ignore[no-untyped-def]
    old_token, old = create_key(store, "svc", [Scope.GENERATE], requests_per_minute=60, now=NOW)
    new_token, new = rotate(store, old.id, timedelta(hours=2), now=NOW)
    assert new.id != old.id and new.scopes == old.scopes and new.requests_per_minute == 60
    assert verify(store, old_token, NOW + timedelta(hours=1)).id == old.id
    assert verify(store, new_token, NOW + timedelta(hours=3)).id == new.id
    with pytest.raises(AuthError, match="expired"):
        verify(store, old_token, NOW + timedelta(hours=2))
    assert store.get(old.id).rotated_to == new.id  # type: ignore[union-attr]
    revoke(store, old.id, now=NOW)
    with pytest.raises(ValueError, match="revoked"):
        rotate(store, old.id, timedelta(hours=1), now=NOW + timedelta(minutes=1))


def test_store_round_trips_and_lists_in_order(store) -> None:  # type: ignore[no-untyped-def]
    for i in range(3):
        create_key(store, f"k{i}", [Scope.EMBED], now=NOW + timedelta(seconds=i))
    assert [r.name for r in store.all()] == ["k0", "k1", "k2"]
    if isinstance(store, FileKeyStore):
        rows = json.loads(store.path.read_text())
        assert {"id", "digest", "scopes", "created_at"} <= set(rows[0])


def test_redis_store_needs_a_url(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="SLIPWAY_REDIS_URL"):
        key_store("redis", tmp_path / "k.json", None)
    assert isinstance(key_store("file", tmp_path / "k.json", None), FileKeyStore)


@pytest.mark.parametrize(
    ("text", "delta"),
    [
        ("90s", timedelta(seconds=90)),
        ("15m", timedelta(minutes=15)),
        ("12h", timedelta(hours=12)),
        ("30d", timedelta(days=30)),
        ("2w", timedelta(weeks=2)),
    ],
)
def test_parse_duration(text: str, delta: timedelta) -> None:
    assert parse_duration(text) == delta


def test_parse_duration_names_the_format() -> None:
    with pytest.raises(ValueError, match="30d"):
        parse_duration("a month")
