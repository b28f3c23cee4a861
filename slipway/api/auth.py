"""Who is calling: an API key from the key store, or (optionally) a JWT bearer token whose
claims map to scopes. Both end as a :class:`Principal` with scopes and rate limits."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slipway.api.keys import (
    PREFIX,
    AuthError,
    Budget,
    KeyRecord,
    KeyStore,
    Scope,
    ScopeError,
    verify,
)
from slipway.api.ratelimit import Limits
from slipway.config import ApiSettings

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Principal:
    """An authenticated caller."""

    id: str  # key:<id>, jwt:<sub> or anonymous
    scopes: frozenset[Scope]
    limits: Limits
    principals: frozenset[str] = frozenset()  # whom it reads documents as ('*': everyone)
    models: frozenset[str] | None = None  # model ids it may call (None: every one)
    budget: Budget | None = None
    account: str = ""  # whose budget and usage it spends (a key's lineage, a JWT's subject)

    def allows_model(self, model: str) -> bool:
        """Whether this caller may call ``model`` (by any of its ids)."""
        return self.models is None or model in self.models

    def require(self, scope: Scope) -> None:
        """:class:`ScopeError` unless this caller holds ``scope`` (admin holds every scope)."""
        if scope not in self.scopes and Scope.ADMIN not in self.scopes:
            raise ScopeError(
                f"This credential lacks the '{scope.value}' scope; create a key "
                f"with `slipway keys create --scope {scope.value}`."
            )


def claim_principals(claims: dict[str, Any]) -> frozenset[str]:
    """Whom a JWT reads documents as: ``user:<sub>``, each of ``groups`` as ``group:<name>``,
    and ``principals`` as given (strings; anything else is ignored)."""
    out = {f"user:{claims['sub']}"} if isinstance(claims.get("sub"), str) else set()
    for name, prefix in (("groups", "group:"), ("principals", "")):
        raw = claims.get(name)
        if isinstance(raw, list):
            out.update(f"{prefix}{v}" for v in raw if isinstance(v, str) and v)
    return frozenset(out)


def claim_models(claims: dict[str, Any]) -> frozenset[str] | None:
    """The ``models`` claim (a list of model ids) of a JWT; ``None`` when absent (every
    model)."""
    raw = claims.get("models")
    if raw is None:
        return None
    return frozenset(v for v in raw if isinstance(v, str)) if isinstance(raw, list) else frozenset()


def claim_scopes(claims: dict[str, Any]) -> frozenset[Scope]:
    """Scopes from a JWT's ``scope`` (space-separated, OAuth 2) or ``scopes`` (a list) claim;
    unknown names are ignored."""
    raw = claims.get("scope") or claims.get("scopes") or []
    names = raw.split() if isinstance(raw, str) else raw if isinstance(raw, list) else []
    known = {s.value for s in Scope}
    return frozenset(Scope(n) for n in names if isinstance(n, str) and n in known)


class CachedKeyStore:
    """A key store read through a short-lived cache: a request does not re-read the file (or
    Redis) each time; a revocation or rotation takes effect within ``ttl`` seconds."""

    def __init__(self, store: KeyStore, ttl: float = 2.0) -> None:
        self.store = store
        self.ttl = ttl
        self._cache: dict[str, tuple[float, KeyRecord | None]] = {}

    def get(self, key_id: str) -> KeyRecord | None:
        now = time.monotonic()
        hit = self._cache.get(key_id)
        if hit is not None and now - hit[0] < self.ttl:
            return hit[1]
        record = self.store.get(key_id)
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[key_id] = (now, record)
        return record

    def put(self, record: KeyRecord) -> None:
        self._cache.pop(record.id, None)
        self.store.put(record)

    def all(self) -> list[KeyRecord]:
        return self.store.all()


class Authenticator:
    """Checks credentials against the key store and, when configured, JWT signatures."""

    def __init__(self, store: KeyStore | None, settings: ApiSettings) -> None:
        self.store = CachedKeyStore(store) if store is not None else None
        self.settings = settings
        self.default_limits = Limits(
            settings.default_requests_per_minute, settings.default_tokens_per_minute
        )
        self._jwks = _load_jwks(settings.jwt_jwks_file) if settings.jwt_jwks_file else None
        if not settings.auth:
            logger.warning(
                "Authentication is OFF (SLIPWAY_AUTH=false): every /v1 route is open "
                "to anyone who can reach this server."
            )

    @property
    def jwt_enabled(self) -> bool:
        """Whether JWT bearer tokens are accepted."""
        return self.settings.jwt_secret is not None or self._jwks is not None

    def authenticate(self, token: str | None) -> Principal:
        """The caller behind ``token``; :class:`AuthError` when it is missing or invalid."""
        if not self.settings.auth:
            return Principal(
                "anonymous", frozenset(Scope), self.default_limits, account="anonymous"
            )
        if token and not token.startswith(PREFIX) and token.count(".") == 2 and self.jwt_enabled:
            return self._jwt(token)
        if self.store is None:
            raise AuthError("API keys are not configured on this server.")
        record = verify(self.store, token)
        limits = Limits(
            record.requests_per_minute or self.default_limits.requests_per_minute,
            record.tokens_per_minute or self.default_limits.tokens_per_minute,
        )
        return Principal(
            f"key:{record.id}",
            frozenset(record.scopes),
            limits,
            frozenset(record.principals),
            frozenset(record.models) if record.models is not None else None,
            record.budget,
            f"key:{record.account or record.id}",
        )

    def _jwt(self, token: str) -> Principal:
        import jwt

        options = {"require": ["exp", "sub"]}
        try:
            header = jwt.get_unverified_header(token)
            if header.get("alg") == "HS256" and self.settings.jwt_secret is not None:
                key: Any = self.settings.jwt_secret.get_secret_value()
            elif header.get("alg") == "RS256" and self._jwks is not None:
                key = (
                    self._jwks[header.get("kid", "")].key
                    if header.get("kid")
                    else (next(iter(self._jwks.keys)).key)
                )
            else:
                raise AuthError(
                    f"JWT algorithm {header.get('alg')!r} is not accepted here "
                    "(HS256 with SLIPWAY_JWT_SECRET, RS256 with SLIPWAY_JWT_JWKS_FILE)."
                )
            claims = jwt.decode(
                token,
                key,
                algorithms=[header["alg"]],
                options=options,  # type: ignore[arg-type]
                audience=self.settings.jwt_audience,
                issuer=self.settings.jwt_issuer,
            )
        except KeyError as exc:
            raise AuthError("JWT signed by an unknown key id.") from exc
        except jwt.PyJWTError as exc:
            raise AuthError(f"Invalid JWT: {exc}.") from exc
        scopes = claim_scopes(claims)
        if not scopes:
            raise ScopeError("The JWT carries no Slipway scope (claim 'scope' or 'scopes').")
        return Principal(
            f"jwt:{claims['sub']}",
            scopes,
            self.default_limits,
            claim_principals(claims),
            claim_models(claims),
            None,
            f"jwt:{claims['sub']}",
        )


def _load_jwks(path: Path) -> Any:
    import jwt

    try:
        return jwt.PyJWKSet.from_dict(json.loads(Path(path).read_text()))
    except (OSError, ValueError, jwt.PyJWKSetError) as exc:
        raise ValueError(
            f"SLIPWAY_JWT_JWKS_FILE={path} is not a readable JWKS file: {exc}"
        ) from exc
