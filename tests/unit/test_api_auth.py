"""Tier 1: credentials become principals: API keys from the store, JWTs (HS256 with a secret,
RS256 with a JWKS file) whose claims map to scopes; the rest is a 401 or a 403."""

from __future__ import annotations

import json
import time
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from slipway.api.auth import Authenticator, claim_scopes
from slipway.api.keys import AuthError, FileKeyStore, Scope, ScopeError, create_key
from slipway.config import ApiSettings

SECRET = "a-test-secret-of-at-least-32-bytes!!"


def claims(**extra: object) -> dict[str, object]:
    return {"sub": "svc-1", "exp": int(time.time()) + 60, "scope": "search embed", **extra}


def test_api_keys_become_principals_with_their_limits(tmp_path: Path) -> None:
    store = FileKeyStore(tmp_path / "keys.json")
    token, record = create_key(store, "ci", [Scope.SEARCH], requests_per_minute=5)
    auth = Authenticator(store, ApiSettings(default_tokens_per_minute=1000))
    who = auth.authenticate(token)
    assert who.id == f"key:{record.id}" and who.scopes == {Scope.SEARCH}
    assert who.limits.requests_per_minute == 5 and who.limits.tokens_per_minute == 1000
    who.require(Scope.SEARCH)
    with pytest.raises(ScopeError, match="generate"):
        who.require(Scope.GENERATE)
    for bad in (None, "", "sk-slipway-nope", token[:-1] + ("A" if token[-1] != "A" else "B")):
        with pytest.raises(AuthError):
            auth.authenticate(bad)


def test_admin_holds_every_scope(tmp_path: Path) -> None:
    store = FileKeyStore(tmp_path / "keys.json")
    token, _ = create_key(store, "root", [Scope.ADMIN])
    who = Authenticator(store, ApiSettings()).authenticate(token)
    for scope in Scope:
        who.require(scope)


def test_hs256_jwt_maps_claims_to_scopes() -> None:
    auth = Authenticator(None, ApiSettings(jwt_secret=SECRET, jwt_audience="slipway"))
    who = auth.authenticate(jwt.encode(claims(aud="slipway"), SECRET, algorithm="HS256"))
    assert who.id == "jwt:svc-1" and who.scopes == {Scope.SEARCH, Scope.EMBED}
    with pytest.raises(AuthError, match="Invalid JWT"):  # wrong audience
        auth.authenticate(jwt.encode(claims(aud="other"), SECRET, algorithm="HS256"))
    with pytest.raises(AuthError, match="Invalid JWT"):  # expired
        auth.authenticate(jwt.encode(claims(aud="slipway", exp=1), SECRET, algorithm="HS256"))
    with pytest.raises(AuthError, match="Invalid JWT"):  # forged
        auth.authenticate(jwt.encode(claims(aud="slipway"), "x" * 32, algorithm="HS256"))
    with pytest.raises(ScopeError, match="no Slipway scope"):
        auth.authenticate(
            jwt.encode(claims(aud="slipway", scope="read:other"), SECRET, algorithm="HS256")
        )
    with pytest.raises(AuthError, match="not accepted"):  # alg none is never accepted
        auth.authenticate(jwt.encode(claims(), None, algorithm="none"))


def test_rs256_jwt_with_a_jwks_file(tmp_path: Path) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    (tmp_path / "jwks.json").write_text(
        json.dumps({"keys": [{**public, "kid": "k1", "use": "sig", "alg": "RS256"}]})
    )
    auth = Authenticator(None, ApiSettings(jwt_jwks_file=tmp_path / "jwks.json"))
    token = jwt.encode(
        claims(scopes=["generate"], scope=None), key, algorithm="RS256", headers={"kid": "k1"}
    )
    assert auth.authenticate(token).scopes == {Scope.GENERATE}
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(AuthError):
        auth.authenticate(jwt.encode(claims(), other, algorithm="RS256", headers={"kid": "k1"}))
    with pytest.raises(AuthError, match="unknown key id"):
        auth.authenticate(jwt.encode(claims(), key, algorithm="RS256", headers={"kid": "k9"}))
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="JWKS"):
        Authenticator(None, ApiSettings(jwt_jwks_file=tmp_path / "bad.json"))


def test_without_jwt_settings_a_jwt_is_just_a_bad_key(tmp_path: Path) -> None:
    auth = Authenticator(FileKeyStore(tmp_path / "k.json"), ApiSettings())
    with pytest.raises(AuthError):
        auth.authenticate(jwt.encode(claims(), SECRET, algorithm="HS256"))


def test_auth_off_is_open_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING", logger="slipway.api.auth"):
        auth = Authenticator(None, ApiSettings(auth=False))
    assert "Authentication is OFF" in caplog.text
    assert auth.authenticate(None).scopes == frozenset(Scope)


def test_claim_scopes_accepts_oauth_string_or_list() -> None:
    assert claim_scopes({"scope": "embed admin x"}) == {Scope.EMBED, Scope.ADMIN}
    assert claim_scopes({"scopes": ["search", 3]}) == {Scope.SEARCH}
    assert claim_scopes({}) == frozenset()


def test_keys_and_jwts_carry_principals_models_and_budgets(tmp_path: Path) -> None:
    from datetime import timedelta

    from slipway.api.keys import Budget, rotate

    store = FileKeyStore(tmp_path / "keys.json")
    token, record = create_key(
        store,
        "fin",
        [Scope.SEARCH],
        principals=["group:finance", "user:ann", "group:finance"],
        models=["local"],
        budget=Budget(tokens_per_day=100),
    )
    auth = Authenticator(store, ApiSettings(jwt_secret=SECRET))
    who = auth.authenticate(token)
    assert who.principals == {"group:finance", "user:ann"} and who.account == f"key:{record.id}"
    assert who.allows_model("local") and not who.allows_model("remote")
    assert who.budget == Budget(tokens_per_day=100)
    # a rotated key keeps them, and spends the same account's budget
    new_token, new = rotate(store, record.id, timedelta(hours=1))
    rotated = auth.authenticate(new_token)
    assert rotated.principals == who.principals and rotated.models == who.models
    assert rotated.account == who.account and new.id != record.id
    # an unbounded budget is no budget; no models list: every model
    _, open_record = create_key(store, "open", [Scope.SEARCH], budget=Budget())
    assert open_record.budget is None and open_record.models is None

    bearer = jwt.encode(
        claims(groups=["eng", 3], principals=["team:x"], models=["local"]),
        SECRET,
        algorithm="HS256",
    )
    caller = auth.authenticate(bearer)
    assert caller.principals == {"user:svc-1", "group:eng", "team:x"}
    assert caller.models == {"local"} and caller.account == "jwt:svc-1"
    plain = auth.authenticate(jwt.encode(claims(), SECRET, algorithm="HS256"))
    assert plain.models is None and plain.principals == {"user:svc-1"}
    bad = auth.authenticate(jwt.encode(claims(models="local"), SECRET, algorithm="HS256"))
    assert bad.models == frozenset()  # a malformed claim allows nothing, never everything
