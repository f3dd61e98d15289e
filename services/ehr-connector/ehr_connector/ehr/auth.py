"""The connector's credentials for the EHR: SMART Backend Services, a static bearer token,
or none (local development only). `make_auth` picks one from `ehr_auth_mode`.

The connector authenticates as a confidential client with an asymmetric key (SMART's
`client-confidential-asymmetric`): it signs a short-lived JWT client assertion (RS384 or
ES384, `iss` = `sub` = client id, `aud` = the token endpoint, a fresh `jti`) and trades it
for an access token with the `client_credentials` grant. The token is cached until shortly
before it expires; a 401 from the EHR invalidates it and the caller asks once more.

Where the key comes from: `ehr_private_key_file` (PEM or a private JWK). When that is
empty and the environment is not prod, the key of the sandbox's generated dev client is
used (`GET /dev/clients/<client id>` names its file), so the local stack runs with no
set-up. The token endpoint is `ehr_token_url` or discovered from
`<base>/.well-known/smart-configuration`.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import httpx
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from joserfc import jwt
from joserfc.jwk import ECKey, JWKRegistry, RSAKey

from ehr_connector.ehr.errors import EhrAuthFailed, EhrUnavailable
from ehr_connector.ehr.metrics import EHR_TOKEN_REQUESTS
from ehr_connector.settings import Settings
from servicekit.logging import get_logger

log = get_logger(__name__)

CLIENT_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
# SMART Backend Services allows exactly these two; other algorithms are refused.
SUPPORTED_ALGORITHMS = ("ES384", "RS384")


@dataclass(frozen=True)
class SigningKey:
    """The client's private key, its algorithm and its key id in the EHR's JWKS."""

    key: ECKey | RSAKey
    alg: str
    kid: str | None


@dataclass(frozen=True)
class AccessToken:
    """A bearer token and when to stop using it (monotonic clock)."""

    value: str
    refresh_at: float


def load_signing_key(data: bytes, kid: str | None = None) -> SigningKey:
    """A signing key from PEM or private-JWK bytes: EC P-384 → ES384, RSA → RS384."""
    text = data.strip()
    if text.startswith(b"{"):
        jwk: dict[str, Any] = json.loads(text)
        imported = JWKRegistry.import_key(jwk)
        kid = kid or jwk.get("kid")
        if isinstance(imported, ECKey) and jwk.get("crv") == "P-384":
            return SigningKey(imported, "ES384", kid)
        if isinstance(imported, RSAKey):
            return SigningKey(imported, "RS384", kid)
        raise ValueError("the JWK must be an RSA or EC P-384 private key")
    private = load_pem_private_key(text, password=None)
    parameters: dict[str, str] = {"kid": kid} if kid else {}
    if isinstance(private, ec.EllipticCurvePrivateKey) and private.curve.name == "secp384r1":
        return SigningKey(ECKey.import_key(text, parameters=parameters), "ES384", kid)  # type: ignore[arg-type]
    if isinstance(private, rsa.RSAPrivateKey):
        return SigningKey(RSAKey.import_key(text, parameters=parameters), "RS384", kid)  # type: ignore[arg-type]
    raise ValueError("the PEM must be an RSA or EC P-384 private key")


def client_assertion(
    key: SigningKey, *, client_id: str, token_url: str, lifetime_s: int, now: float
) -> str:
    """A signed SMART Backend Services client assertion (single use: fresh `jti`)."""
    header: dict[str, Any] = {"alg": key.alg, "typ": "JWT"}
    if key.kid:
        header["kid"] = key.kid
    claims = {
        "iss": client_id,
        "sub": client_id,
        "aud": token_url,
        "iat": int(now),
        "exp": int(now) + lifetime_s,
        "jti": uuid.uuid4().hex,
    }
    return jwt.encode(header, claims, key.key, algorithms=[key.alg])


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


class EhrAuth(Protocol):
    """What the FHIR client needs from an auth mode: a token ("" = send no Authorization)."""

    async def token(self) -> str:
        """The bearer token to send now."""
        ...

    def invalidate(self, rejected: str) -> None:
        """The EHR answered 401 to `rejected`."""
        ...


class StaticBearerAuth:
    """A token issued out of band (some vendor sandboxes, API gateways): sent as is."""

    def __init__(self, token: str) -> None:
        if not token:
            raise EhrAuthFailed("EHR_AUTH_MODE=static-bearer needs EHR_STATIC_TOKEN")
        self._token = token

    async def token(self) -> str:
        """The configured token."""
        return self._token

    def invalidate(self, rejected: str) -> None:
        """Nothing to refresh: a second 401 surfaces as `EhrAuthFailed`."""


class NoAuth:
    """No credentials, for an open development server (HAPI in the interop tests)."""

    async def token(self) -> str:
        """No token: the request carries no Authorization header."""
        return ""

    def invalidate(self, rejected: str) -> None:
        """Nothing to refresh."""


def make_auth(settings: Settings, http: httpx.AsyncClient) -> EhrAuth:
    """The auth mode settings ask for; `none` is refused in prod."""
    if settings.ehr_auth_mode == "static-bearer":
        return StaticBearerAuth(settings.ehr_static_token)
    if settings.ehr_auth_mode == "none":
        if settings.environment == "prod":
            raise EhrAuthFailed("EHR_AUTH_MODE=none is for local development only")
        return NoAuth()
    return SmartBackendAuth(settings, http)


class SmartBackendAuth:
    """Obtains, caches and refreshes the connector's access token."""

    def __init__(
        self,
        settings: Settings,
        http: httpx.AsyncClient,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self._http = http
        self._clock = clock
        self._wall_clock = wall_clock
        self._lock = asyncio.Lock()
        self._token: AccessToken | None = None
        self._key: SigningKey | None = None
        self._token_url: str | None = settings.ehr_token_url or None
        self.tokens_fetched = 0

    async def token(self) -> str:
        """A valid access token: the cached one, or a new one (one fetch at a time)."""
        cached = self._token
        if cached is not None and self._clock() < cached.refresh_at:
            return cached.value
        async with self._lock:
            cached = self._token
            if cached is not None and self._clock() < cached.refresh_at:
                return cached.value
            self._token = await self._fetch()
            return self._token.value

    def invalidate(self, rejected: str) -> None:
        """Forget `rejected` (the EHR answered 401 to it) unless already replaced."""
        if self._token is not None and self._token.value == rejected:
            self._token = None

    async def token_url(self) -> str:
        """The token endpoint: configured, or from the SMART discovery document."""
        if self._token_url is None:
            config = await self._smart_configuration()
            endpoint = config.get("token_endpoint")
            if not isinstance(endpoint, str) or not endpoint:
                raise EhrAuthFailed("the EHR's smart-configuration names no token_endpoint")
            self._token_url = endpoint
        return self._token_url

    async def _smart_configuration(self) -> dict[str, Any]:
        # SMART puts discovery under the FHIR base; some servers (the sandbox among them,
        # whose FHIR routes shadow that path) answer only at the host root.
        base = self.settings.ehr_base_url.rstrip("/")
        try:
            return await self._get_json(f"{base}/.well-known/smart-configuration")
        except EhrAuthFailed:
            origin = _origin(self.settings.ehr_base_url)
            return await self._get_json(f"{origin}/.well-known/smart-configuration")

    async def signing_key(self) -> SigningKey:
        """The client's signing key (loaded once)."""
        if self._key is None:
            self._key = await self._load_key()
        return self._key

    async def _load_key(self) -> SigningKey:
        kid = self.settings.ehr_key_id or None
        if self.settings.ehr_private_key_file:
            data = await asyncio.to_thread(Path(self.settings.ehr_private_key_file).read_bytes)
            return load_signing_key(data, kid)
        if self.settings.environment == "prod":
            raise EhrAuthFailed("EHR_PRIVATE_KEY_FILE is required in prod")
        # Dev/test: the sandbox generated a key pair for this client and says where it is.
        url = f"{_origin(self.settings.ehr_base_url)}/dev/clients/{self.settings.ehr_client_id}"
        info = await self._get_json(url)
        path = info.get("private_key_path")
        if not isinstance(path, str):
            raise EhrAuthFailed("the EHR's dev client endpoint names no private key")
        log.info("ehr.auth.dev_client_key", client_id=self.settings.ehr_client_id)
        data = await asyncio.to_thread(Path(path).read_bytes)
        return load_signing_key(data, kid or info.get("kid"))

    async def _get_json(self, url: str) -> dict[str, Any]:
        try:
            response = await self._http.get(url, headers={"Accept": "application/json"})
        except httpx.TransportError as exc:
            raise EhrUnavailable(f"EHR auth endpoint unreachable ({type(exc).__name__})") from exc
        if response.status_code >= 500:
            raise EhrUnavailable(f"EHR auth endpoint answered {response.status_code}")
        if response.status_code != 200:
            raise EhrAuthFailed(f"EHR auth endpoint answered {response.status_code}")
        body = response.json()
        if not isinstance(body, dict):
            raise EhrAuthFailed("EHR auth endpoint answered a non-object")
        return body

    async def _fetch(self) -> AccessToken:
        key = await self.signing_key()
        token_url = await self.token_url()
        assertion = client_assertion(
            key,
            client_id=self.settings.ehr_client_id,
            token_url=token_url,
            lifetime_s=self.settings.ehr_assertion_lifetime_s,
            now=self._wall_clock(),
        )
        form = {
            "grant_type": "client_credentials",
            "scope": self.settings.ehr_scope,
            "client_assertion_type": CLIENT_ASSERTION_TYPE,
            "client_assertion": assertion,
        }
        started = self._clock()
        try:
            response = await self._http.post(
                token_url, data=form, headers={"Accept": "application/json"}
            )
        except httpx.TransportError as exc:
            EHR_TOKEN_REQUESTS.labels("unreachable").inc()
            raise EhrUnavailable(f"EHR token endpoint unreachable ({type(exc).__name__})") from exc
        if response.status_code >= 500 or response.status_code == 429:
            EHR_TOKEN_REQUESTS.labels("unavailable").inc()
            raise EhrUnavailable(f"EHR token endpoint answered {response.status_code}")
        body = _json_object(response)
        if response.status_code != 200 or not isinstance(body.get("access_token"), str):
            EHR_TOKEN_REQUESTS.labels("rejected").inc()
            error = body.get("error", f"HTTP {response.status_code}")
            log.warning("ehr.auth.token_rejected", error=str(error))
            raise EhrAuthFailed(f"EHR token endpoint refused the client: {error}")
        EHR_TOKEN_REQUESTS.labels("issued").inc()
        self.tokens_fetched += 1
        expires_in = float(body.get("expires_in") or 300)
        # Refresh early, but never sooner than half-way through a short-lived token.
        margin = min(self.settings.ehr_token_refresh_margin_s, expires_in / 2)
        log.info("ehr.auth.token_issued", expires_in=expires_in)
        return AccessToken(body["access_token"], started + expires_in - margin)


def _json_object(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}
