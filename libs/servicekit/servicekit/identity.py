"""Service identity: every call from one service to another carries a short-lived signed token.

The token is a JWT (HS256) signed with the environment's one service key
(`SERVICE_TOKEN_KEY`, or the file `SERVICE_TOKEN_KEY_FILE` names, e.g. a mounted Secret):
`iss` and `sub` name the calling service, `aud` the service called, `exp` is a minute or so
after `iat`, `jti` is unique. Reaching a port is therefore not enough to read or change a
patient's data: only a holder of the key, i.e. one of our services, can mint a token.

The callee verifies it on every route of its `ServiceDefinition.api` (`require_service_token`,
wired by the app factory); health, metrics, `/ops` (ops token) and `public_api` routes (the
gateway's patient API, the connector's webhook: their own authentication) are not behind it.
A missing, malformed, forged or expired token is a 401; a valid token minted for another
service is a 403. Both are problem+json and counted in `security_events_total`.

The development default key is refused outside development (`servicekit.secrets`).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
from fastapi import HTTPException, Request
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import OctKey

from servicekit.limits import SECURITY_EVENTS

ALGORITHM = "HS256"
TOKEN_TYPE = "service+jwt"  # noqa: S105 - a JWT typ, not a secret
# Development only (refused outside dev/test): lets `make up` and the tests run with
# nothing configured. Every service falls back to the same value, so they understand each
# other locally.
DEV_SERVICE_TOKEN_KEY = "dev-service-token-key-not-for-production"  # noqa: S105
CLOCK_SKEW_S = 30
# A token is reused until this share of its lifetime has passed, so a callee never gets
# one about to expire.
_REUSE_SHARE = 0.5


class ServiceTokenError(Exception):
    """A service token that must be refused: `status` 401 (not ours) or 403 (not for us)."""

    def __init__(self, status: int, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.reason = reason
        self.detail = detail


def _key(secret: str) -> OctKey:
    return OctKey.import_key(secret.encode())


@dataclass(frozen=True)
class Caller:
    """The verified identity of the service that made a call."""

    service: str
    token_id: str


class ServiceTokens:
    """Mints this service's tokens for the services it calls (cached per audience)."""

    def __init__(self, issuer: str, key: str, ttl_s: float = 60.0) -> None:
        self.issuer = issuer
        self._key = _key(key)
        self.ttl_s = ttl_s
        self._cache: dict[str, tuple[str, float]] = {}

    @classmethod
    def of(cls, settings: Any) -> ServiceTokens:
        """The token minter of a service, from its `ServiceSettings`."""
        return cls(settings.service_name, settings.service_token_key, settings.service_token_ttl_s)

    def token(self, audience: str, now: float | None = None) -> str:
        """A token for calling `audience` (a fresh one once half its life has passed)."""
        moment = time.time() if now is None else now
        cached = self._cache.get(audience)
        if cached is not None and moment < cached[1]:
            return cached[0]
        issued = int(moment)
        claims = {
            "iss": self.issuer,
            "sub": self.issuer,
            "aud": audience,
            "iat": issued,
            "exp": issued + max(1, int(self.ttl_s)),
            "jti": uuid.uuid4().hex,
        }
        token = jwt.encode({"alg": ALGORITHM, "typ": TOKEN_TYPE}, claims, self._key)
        self._cache[audience] = (token, moment + self.ttl_s * _REUSE_SHARE)
        return token

    def headers(self, audience: str) -> dict[str, str]:
        """The `Authorization` header for a call to `audience`."""
        return {"Authorization": f"Bearer {self.token(audience)}"}

    def auth(self, audience: str | Callable[[httpx.URL], str]) -> ServiceAuth:
        """An httpx `auth` that signs every request for `audience` (or the audience the
        request's URL maps to)."""
        return ServiceAuth(self, audience)


class ServiceAuth(httpx.Auth):
    """Adds a service token to each request of an httpx client."""

    def __init__(self, tokens: ServiceTokens, audience: str | Callable[[httpx.URL], str]) -> None:
        self.tokens = tokens
        self.audience = audience

    def auth_flow(self, request: httpx.Request) -> Any:
        # An Authorization the caller set on purpose (the ops token of an /ops call) wins.
        if "authorization" not in request.headers:
            target = self.audience if isinstance(self.audience, str) else self.audience(request.url)
            request.headers["Authorization"] = f"Bearer {self.tokens.token(target)}"
        yield request


# Verified tokens remembered (a caller reuses one for half its minute): a bound, not a
# working set; when full it starts again.
VERIFIED_CACHE_MAX = 1024


@dataclass(frozen=True)
class _Verified:
    """What a token's signature and fixed claims established, re-checked against the clock
    at every use."""

    caller: Caller
    issued: int
    expires: int
    audience: object


class ServiceTokenVerifier:
    """Checks the tokens other services present to this one.

    A token that passed is remembered by its exact text: its signature, type, issuer and
    audience cannot change, so the next call presenting it is checked against the clock
    and the audience only (every service-to-service call verified the JWT again: 3-4 % of records',
    messaging's and scheduling's CPU serving the portal, py-spy, benchmark 4). Refused
    tokens are never remembered, so each refusal is verified and counted again.
    """

    def __init__(self, audience: str, key: str) -> None:
        self.audience = audience
        self._key = _key(key)
        self._verified: dict[str, _Verified] = {}

    @classmethod
    def of(cls, settings: Any) -> ServiceTokenVerifier:
        """The verifier of a service, from its `ServiceSettings`."""
        return cls(settings.service_name, settings.service_token_key)

    def verify(self, authorization: str | None, now: float | None = None) -> Caller:
        """The caller named by a valid `Authorization: Bearer` service token."""
        if not authorization:
            raise ServiceTokenError(401, "service_token_missing", "A service token is required.")
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token or len(token) > 4096:
            raise ServiceTokenError(401, "service_token_invalid", "Malformed Authorization.")
        moment = time.time() if now is None else now
        known = self._verified.get(token)
        if known is None:
            known = self._verify_signed(token)
        if known.expires + CLOCK_SKEW_S < moment:
            raise ServiceTokenError(401, "service_token_expired", "The service token expired.")
        if known.issued - CLOCK_SKEW_S > moment:
            raise ServiceTokenError(401, "service_token_invalid", "The token is from the future.")
        if known.audience != self.audience:
            raise ServiceTokenError(
                403, "service_token_wrong_audience", "The service token is for another service."
            )
        if token not in self._verified:
            if len(self._verified) >= VERIFIED_CACHE_MAX:
                self._verified.clear()
            self._verified[token] = known
        return known.caller

    def _verify_signed(self, token: str) -> _Verified:
        """The signature and the claims, checked against the clock and the audience by
        `verify` (in that order: an expired token is a 401 whoever it is for)."""
        try:
            decoded = jwt.decode(token, self._key, algorithms=[ALGORITHM])
        except (JoseError, ValueError) as exc:
            raise ServiceTokenError(
                401, "service_token_invalid", "The service token is not valid."
            ) from exc
        if decoded.header.get("typ") != TOKEN_TYPE:
            raise ServiceTokenError(401, "service_token_invalid", "Not a service token.")
        claims = decoded.claims
        issuer = claims.get("iss")
        exp, iat = claims.get("exp"), claims.get("iat")
        if not isinstance(issuer, str) or not issuer or claims.get("sub") != issuer:
            raise ServiceTokenError(401, "service_token_invalid", "The token names no service.")
        if not isinstance(exp, int) or not isinstance(iat, int):
            raise ServiceTokenError(401, "service_token_invalid", "The token has no lifetime.")
        caller = Caller(service=issuer, token_id=str(claims.get("jti", "")))
        return _Verified(caller=caller, issued=iat, expires=exp, audience=claims.get("aud"))


async def require_service_token(request: Request) -> Caller:
    """FastAPI dependency: the calling service, or a 401/403 problem."""
    service = request.app.state.service
    verifier: ServiceTokenVerifier | None = getattr(service, "service_token_verifier", None)
    if verifier is None:
        verifier = ServiceTokenVerifier.of(service.settings)
        service.service_token_verifier = verifier
    try:
        caller = verifier.verify(request.headers.get("authorization"))
    except ServiceTokenError as exc:
        SECURITY_EVENTS.labels(service.settings.service_name, exc.reason).inc()
        headers = {"WWW-Authenticate": 'Bearer realm="services"'} if exc.status == 401 else None
        raise HTTPException(exc.status, exc.detail, headers=headers) from exc
    request.state.service_caller = caller
    return caller
