"""Patient authentication: OIDC bearer tokens verified against the issuer's JWKS, and
SMART v2 patient scopes (`patient/Observation.rs`) checked per resource type."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import httpx
from joserfc import jws, jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from gateway.settings import Settings

ALGORITHMS = ["ES256", "ES384", "RS256", "RS384"]


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

    def allows_read(self, resource_type: str) -> bool:
        """SMART v1 (`read`) and v2 (`rs`, `r`) patient scopes, `*` or the exact type."""
        for scope in self.scopes:
            context, _, rest = scope.partition("/")
            if context != "patient" or "." not in rest:
                continue
            rtype, _, perms = rest.partition(".")
            if rtype not in ("*", resource_type):
                continue
            if perms in ("read", "*") or "r" in perms.split("?")[0]:
                return True
        return False


class TokenVerifier:
    """Verifies patient access tokens; keys are cached and re-fetched for an unknown kid."""

    def __init__(self, settings: Settings, http: httpx.AsyncClient) -> None:
        self.settings = settings
        self.http = http
        self._keys: KeySet | None = None
        self._fetched_at = 0.0

    async def _jwks_url(self) -> str:
        if self.settings.oidc_jwks_url:
            return self.settings.oidc_jwks_url
        issuer = self.settings.oidc_issuer.rstrip("/")
        response = await self.http.get(f"{issuer}/.well-known/openid-configuration")
        response.raise_for_status()
        return str(response.json()["jwks_uri"])

    async def _keyset(self, *, refresh: bool = False) -> KeySet:
        stale = time.monotonic() - self._fetched_at > self.settings.jwks_refresh_s
        if self._keys is None or stale or refresh:
            try:
                response = await self.http.get(await self._jwks_url())
                response.raise_for_status()
                self._keys = KeySet.import_key_set(response.json())
                self._fetched_at = time.monotonic()
            except (httpx.HTTPError, ValueError, KeyError) as exc:
                if self._keys is None:
                    raise AuthError(503, "The identity provider's keys are unavailable.") from exc
        assert self._keys is not None
        return self._keys

    async def verify(self, token: str) -> PatientToken:
        """Verify signature, issuer, audience and lifetime; return the patient context."""
        try:
            kid = jws.extract_compact(token.encode()).headers().get("kid")
        except (JoseError, ValueError) as exc:
            raise AuthError(401, "The access token is malformed.") from exc
        keys = await self._keyset()
        if kid and not any(k.kid == kid for k in keys.keys):
            keys = await self._keyset(refresh=True)  # the issuer may have rotated its keys
        try:
            decoded = jwt.decode(token, keys, algorithms=ALGORITHMS)
        except (JoseError, ValueError) as exc:
            raise AuthError(401, "The access token's signature is not valid.") from exc
        claims: dict[str, Any] = decoded.claims
        registry = jwt.JWTClaimsRegistry(
            leeway=30,
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
        patient = claims.get("patient")
        if not isinstance(patient, str) or not patient:
            raise AuthError(403, "The access token is not a patient's token.")
        scopes = frozenset(str(claims.get("scope", "")).split())
        return PatientToken(
            subject=str(claims.get("sub", "")), patient_fhir_id=patient, scopes=scopes
        )
