"""Verification of the EHR's notification signatures (`X-Signature`, a detached JWS).

The EHR signs the exact bytes of every notification body: `X-Signature` is a JWS Compact
Serialization with a detached, base64url-encoded payload (RFC 7515 Appendix F),
`<protected>..<signature>`, ES256, whose protected header names the signing key (`kid`,
published in the EHR's JWKS), the issue time (`iat`), a unique id (`jti`) and the endpoint
it was sent to (`htu`). A notification is accepted only when the signature verifies with
that key, `iat` is within the tolerance window, `htu` is our own endpoint, and `jti` has
never been accepted before (the caller records it durably: see `store.remember_jti`).

The JWKS is cached; an unknown `kid` refetches it (at most every `refresh_interval_s`), so a
key rotation on the EHR side is picked up without a restart.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from joserfc.jws import JWSRegistry
from joserfc.registry import HeaderParameter

from servicekit.logging import get_logger

log = get_logger(__name__)

SIGNATURE_HEADER = "X-Signature"
# After a failed JWKS fetch, notifications are answered 503 (retry later) this long.
_RETRY_AFTER_FAILURE_S = 2.0
ALGORITHM = "ES256"
_HEADERS = {
    "iat": HeaderParameter("Issued at (Unix seconds)", "int", True),
    "jti": HeaderParameter("Unique id of this signature", "str", True),
    "htu": HeaderParameter("The endpoint the notification was sent to", "str"),
}


class SignatureRejected(Exception):
    """A signature that must not be accepted; `reason` is a short code for metrics and logs."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class VerifiedSignature:
    """What a verified signature tells about the notification (no content)."""

    kid: str
    jti: str
    iat: int


def _registry() -> JWSRegistry:
    registry = JWSRegistry(header_registry=_HEADERS, algorithms=[ALGORITHM])
    # Full-resource notifications can be large: the body is ours already, not a token.
    registry.max_payload_length = 64 * 1024 * 1024
    registry.max_header_length = 8192
    return registry


def _b64decode(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def _same_endpoint(a: str, b: str) -> bool:
    return a.rstrip("/") == b.rstrip("/")


class JwksCache:
    """The EHR's public keys, fetched on demand and refreshed when an unknown `kid` shows up."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        resolve_url: Callable[[], Awaitable[str]],
        *,
        refresh_interval_s: float = 30.0,
    ) -> None:
        self._http = http
        self._resolve_url = resolve_url
        self._refresh_interval_s = refresh_interval_s
        self._keys: dict[str, Any] = {}
        self._fetched_at = -1e18
        self._failed_at = -1e18
        self._lock = asyncio.Lock()

    async def _fetch(self) -> None:
        url = await self._resolve_url()
        response = await self._http.get(url, timeout=10.0)
        response.raise_for_status()
        body = response.json()
        keys = body.get("keys") if isinstance(body, dict) else None
        if not isinstance(keys, list):
            raise ValueError("the JWKS has no keys")
        self._keys = {
            str(k["kid"]): k for k in keys if isinstance(k, dict) and isinstance(k.get("kid"), str)
        }
        self._fetched_at = time.monotonic()
        log.info("inbound.jwks_fetched", keys=len(self._keys))

    async def key_set(self, kid: str) -> KeySet:
        """A key set holding the key `kid`; raises `SignatureRejected` if the EHR has none."""
        async with self._lock:
            now = time.monotonic()
            stale = now - self._fetched_at >= self._refresh_interval_s
            if kid not in self._keys and stale:
                if now - self._failed_at < _RETRY_AFTER_FAILURE_S:
                    raise SignatureRejected("jwks_unavailable", "The EHR's keys are unavailable.")
                try:
                    await self._fetch()
                except (httpx.HTTPError, ValueError) as exc:
                    self._failed_at = now
                    log.warning("inbound.jwks_unavailable", error=type(exc).__name__)
                    raise SignatureRejected(
                        "jwks_unavailable", "The EHR's keys are unavailable."
                    ) from exc
            key = self._keys.get(kid)
        if key is None:
            raise SignatureRejected("unknown_kid", "The signing key is not in the EHR's JWKS.")
        try:
            return KeySet.import_key_set({"keys": [key]})
        except (JoseError, ValueError, TypeError, KeyError) as exc:
            raise SignatureRejected("bad_key", "The EHR's key cannot be used.") from exc


class NotificationVerifier:
    """Checks `X-Signature` against the body, the JWKS, the time window and the endpoint."""

    def __init__(self, jwks: JwksCache, *, endpoint: str, max_age_s: float = 300.0) -> None:
        self.jwks = jwks
        self.endpoint = endpoint
        self.max_age_s = max_age_s

    async def verify(
        self, signature: str | None, body: bytes, *, now: float | None = None
    ) -> VerifiedSignature:
        """Verify a detached signature of `body`; raises `SignatureRejected` with a reason."""
        if not signature:
            raise SignatureRejected("missing_signature", "The notification is not signed.")
        parts = signature.strip().split(".")
        if len(parts) != 3 or parts[1] != "" or not parts[0] or not parts[2]:
            raise SignatureRejected("malformed_signature", "Not a detached JWS.")
        try:
            header = json.loads(_b64decode(parts[0]))
        except (ValueError, UnicodeDecodeError) as exc:
            raise SignatureRejected("malformed_signature", "Unreadable JWS header.") from exc
        if not isinstance(header, dict):
            raise SignatureRejected("malformed_signature", "Unreadable JWS header.")
        if header.get("alg") != ALGORITHM:
            raise SignatureRejected("bad_algorithm", f"The signature must be {ALGORITHM}.")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise SignatureRejected("malformed_signature", "The JWS header names no key.")
        keys = await self.jwks.key_set(kid)
        try:
            jws.deserialize_compact(
                f"{parts[0]}..{parts[2]}", keys, registry=_registry(), payload=body
            )
        except (JoseError, ValueError, TypeError, KeyError) as exc:
            raise SignatureRejected("bad_signature", "The signature does not verify.") from exc
        iat = header.get("iat")
        moment = time.time() if now is None else now
        if isinstance(iat, bool) or not isinstance(iat, int) or abs(moment - iat) > self.max_age_s:
            raise SignatureRejected("stale_signature", "iat is outside the accepted window.")
        jti = header.get("jti")
        if not isinstance(jti, str) or not 8 <= len(jti) <= 128:
            raise SignatureRejected("malformed_signature", "The signature has no usable jti.")
        htu = header.get("htu")
        if not isinstance(htu, str) or not _same_endpoint(htu, self.endpoint):
            raise SignatureRejected("wrong_endpoint", "The signature is for another endpoint.")
        return VerifiedSignature(kid=kid, jti=jti, iat=iat)
