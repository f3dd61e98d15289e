"""Patient authentication: OIDC bearer tokens verified against the issuer's JWKS, and
SMART patient scopes (`patient/Observation.rs`, v1 `patient/Observation.read`) checked
exactly per resource type and permission (gateway.scopes).

Only access tokens are accepted: an OIDC ID token is signed by the same issuer and often
carries the same audience (the portal's client id), so signature and `aud` alone would let
an ID token act as an access token. An access token says what it is either in its header
(`typ: at+jwt`, RFC 9068) or with the `token_use: access` claim; anything else is refused.
Unknown key ids re-fetch the issuer's JWKS at most once per cool-down, so anonymous
traffic with invented `kid`s cannot hammer the identity provider; concurrent requests that
find the keys stale share one fetch. Stale keys (older than `jwks_refresh_s`) are still the
issuer's last word: requests wait for their refresh at most `jwks_stale_wait_s` after it
began, then the known keys serve while it goes on, and a failed refresh is tried again
after the cool-down. An issuer that hung (benchmark 4 stops the sandbox, which issues the
patients' tokens) held every request of the portal on the one fetch until its timeout,
then the next request fetched again: the portal stopped for as long as the issuer did.

A verified token is remembered (bounded, by its SHA-256) until it expires, so a patient's
app calling many times checks the signature once: the same bytes verified against the same
key set give the same answer, and the entry is dropped once the token expires (same leeway)
or the key set is fetched again (a rotated or withdrawn key)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import httpx
from joserfc import jws, jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from gateway.caching import Lru
from gateway.scopes import SmartScope, parse_granted, parse_scope, scopes_grant
from gateway.settings import Settings
from servicekit.logging import get_logger

log = get_logger(__name__)

ALGORITHMS = ["ES256", "ES384", "RS256", "RS384"]
ACCESS_TOKEN_TYPES = frozenset({"at+jwt", "application/at+jwt"})
# Tokens longer than this are refused before any parsing (a real one is ~1 kB).
MAX_TOKEN_LENGTH = 8192
# Seconds a token is still accepted after its `exp` (clock skew between us and the issuer).
LEEWAY_S = 30
# Verified tokens remembered at once (each entry ~300 bytes).
VERIFIED_CACHED = 10_000


class AuthError(Exception):
    """The caller is not authenticated (401) or not allowed (403)."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


@dataclass(frozen=True)
class PatientToken:
    """What a verified token says about its holder."""

    subject: str
    patient_fhir_id: str
    scopes: frozenset[str]
    client_id: str = ""  # the app the token was issued to (`client_id`, else `azp`)
    fhir_user: str = ""  # SMART `fhirUser`: the user's FHIR resource (Patient, RelatedPerson)

    @cached_property
    def granted(self) -> tuple[SmartScope, ...]:
        """The token's well-formed resource scopes (parsed once: a remembered token serves
        many requests, each checking several scopes)."""
        return parse_granted(self.scopes)

    def allows(self, required: SmartScope | str) -> bool:
        """Whether a patient scope of the token grants every permission of `required`."""
        wanted = parse_scope(required) if isinstance(required, str) else required
        return scopes_grant(self.granted, wanted)

    def allows_read(self, resource_type: str) -> bool:
        """Read (`r`) or search (`s`) on the type: the routes' own dependencies say which."""
        return self.allows(f"patient/{resource_type}.r") or self.allows(
            f"patient/{resource_type}.s"
        )


class TokenVerifier:
    """Verifies patient access tokens; keys are cached and re-fetched for an unknown kid."""

    def __init__(
        self,
        settings: Settings,
        http: httpx.AsyncClient,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.http = http
        self.clock = clock  # wall-clock seconds, for `exp` (tests pass their own)
        self._keys: KeySet | None = None
        self._fetched_at = 0.0
        self._last_attempt = float("-inf")
        self.fetches = 0  # JWKS fetches made (tests and the security report read it)
        self._fetching = asyncio.Lock()
        # The refresh of stale keys under way (requests wait for it only briefly).
        self._refreshing: asyncio.Task[None] | None = None
        self._refresh_began = 0.0
        # sha256(token) -> (what it says, its exp, the key set it was verified with)
        self._verified: Lru[bytes, tuple[PatientToken, float, KeySet]] = Lru(VERIFIED_CACHED)

    async def _jwks_url(self) -> str:
        if self.settings.oidc_jwks_url:
            return self.settings.oidc_jwks_url
        issuer = self.settings.oidc_issuer.rstrip("/")
        response = await self.http.get(f"{issuer}/.well-known/openid-configuration")
        response.raise_for_status()
        return str(response.json()["jwks_uri"])

    def _fresh(self, refresh: bool) -> bool:
        now = time.monotonic()
        stale = now - self._fetched_at > self.settings.jwks_refresh_s
        if refresh and now - self._last_attempt < self.settings.jwks_min_refresh_s:
            refresh = False  # cool-down: an unknown kid re-fetches at most this often
        return not (self._keys is None or stale or refresh)

    async def _keyset(self, *, refresh: bool = False) -> KeySet:
        if self._keys is not None and self._fresh(refresh):
            return self._keys
        if self._keys is not None and not refresh:
            return await self._stale_keys(self._keys)
        async with self._fetching:
            # Whoever waited here while another request fetched uses that fetch.
            await self._fetch(refresh)
        assert self._keys is not None
        return self._keys

    async def _stale_keys(self, keys: KeySet) -> KeySet:
        """The keys once a refresh (begun now, or under way) is done, or the known ones when
        it takes longer than `jwks_stale_wait_s` from its start or failed a moment ago."""
        now = time.monotonic()
        task = self._refreshing
        if task is None or task.done():
            failed = self._last_attempt > self._fetched_at  # it set no new keys
            if failed and now - self._last_attempt < self.settings.jwks_min_refresh_s:
                return keys  # the last attempt failed lately: no new one before the cool-down
            task = self._refreshing = asyncio.create_task(self._refresh())
            task.add_done_callback(_log_refresh_failure)
            self._refresh_began = now
        left = self._refresh_began + self.settings.jwks_stale_wait_s - now
        if left > 0:
            # Shielded: a request that stops waiting leaves the refresh running.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(task), left)
        return self._keys if self._keys is not None else keys

    async def _refresh(self) -> None:
        async with self._fetching:
            await self._fetch(False)

    async def _fetch(self, refresh: bool) -> None:
        if not self._fresh(refresh):
            now = time.monotonic()
            self._last_attempt = now
            self.fetches += 1
            try:
                response = await self.http.get(await self._jwks_url())
                response.raise_for_status()
                self._keys = KeySet.import_key_set(response.json())
                self._fetched_at = time.monotonic()
                self._verified.clear()  # verified with keys that may be gone now
            except (httpx.HTTPError, ValueError, KeyError) as exc:
                if self._keys is None:
                    raise AuthError(503, "The identity provider's keys are unavailable.") from exc

    async def verify(self, token: str) -> PatientToken:
        """Verify signature, issuer, audience and lifetime; return the patient context."""
        if len(token) > MAX_TOKEN_LENGTH:
            raise AuthError(401, "The access token is malformed.")
        digest = hashlib.sha256(token.encode()).digest()
        known = self._verified.get(digest)
        if known is not None:
            found, expires, keys = known
            if self.clock() <= expires + LEEWAY_S and keys is self._keys and self._fresh(False):
                return found
            self._verified.pop(digest)
        found, expires, keys = await self._verify(token)
        self._verified.put(digest, (found, expires, keys))
        return found

    async def _verify(self, token: str) -> tuple[PatientToken, float, KeySet]:
        try:
            header = jws.extract_compact(token.encode()).headers()
        except (JoseError, ValueError, TypeError) as exc:
            raise AuthError(401, "The access token is malformed.") from exc
        kid = header.get("kid")
        keys = await self._keyset()
        if kid and not any(k.kid == kid for k in keys.keys):
            keys = await self._keyset(refresh=True)  # the issuer may have rotated its keys
            if not any(k.kid == kid for k in keys.keys):
                raise AuthError(401, "The access token's signing key is not known.")
        try:
            decoded = jwt.decode(token, keys, algorithms=ALGORITHMS)
        except (JoseError, ValueError, TypeError) as exc:
            raise AuthError(401, "The access token's signature is not valid.") from exc
        claims: dict[str, Any] = decoded.claims
        registry = jwt.JWTClaimsRegistry(
            now=lambda: int(self.clock()),
            leeway=LEEWAY_S,
            iss={"essential": True, "value": self.settings.oidc_issuer},
            exp={"essential": True},
        )
        try:
            registry.validate(claims)
        except JoseError as exc:
            raise AuthError(401, f"The access token is not valid: {exc.error}.") from exc
        audience = claims.get("aud")
        audiences = audience if isinstance(audience, list) else [audience]
        if self.settings.oidc_audience not in audiences:
            raise AuthError(401, "The access token is not meant for this portal.")
        if not _is_access_token(header, claims):
            raise AuthError(401, "The token is not an access token (an ID token is not).")
        patient = claims.get("patient")
        if not isinstance(patient, str) or not patient:
            raise AuthError(403, "The access token is not a patient's token.")
        scopes = frozenset(str(claims.get("scope", "")).split())
        found = PatientToken(
            subject=str(claims.get("sub", "")),
            patient_fhir_id=patient,
            scopes=scopes,
            client_id=str(claims.get("client_id") or claims.get("azp") or "")[:200],
            fhir_user=str(claims.get("fhirUser") or "")[:500],
        )
        return found, float(claims["exp"]), keys


def _log_refresh_failure(task: asyncio.Task[None]) -> None:
    """Retrieve a background refresh's failure (`_fetch` keeps the known keys on an HTTP
    error; anything else, such as a key set that does not parse, is logged here)."""
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.warning("auth.jwks_refresh_failed", error=type(exc).__name__)


def _is_access_token(header: dict[str, Any], claims: dict[str, Any]) -> bool:
    """RFC 9068 `typ: at+jwt`, or the issuer's `token_use: access` claim; an ID token has
    neither (and carries `nonce`/`at_hash`/`auth_time` an access token does not need)."""
    typ = str(header.get("typ", "")).lower()
    if typ in ACCESS_TOKEN_TYPES:
        return True
    return claims.get("token_use") == "access"
