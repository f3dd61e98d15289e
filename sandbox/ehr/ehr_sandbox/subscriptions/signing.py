"""Detached JWS signatures of notification bodies (header `X-Signature`).

Format: a JWS Compact Serialization with a *detached*, base64url-encoded payload
(RFC 7515 Appendix F; `b64` is not used, so any JOSE library verifies it):

    X-Signature: <BASE64URL(protected header)>..<BASE64URL(signature)>

The signing input is `BASE64URL(header) || '.' || BASE64URL(body)`, where body is the
exact bytes of the HTTP request body. The protected header is

    {"alg": "ES256", "kid": "<kid in /auth/jwks.json>", "typ": "JOSE",
     "iat": <Unix seconds>, "jti": "<unique id>", "htu": "<the endpoint URL>"}

A receiver rebuilds `header.BASE64URL(body).signature`, verifies it with the key `kid` of
the sandbox's JWKS (ES256 only), rejects an `iat` outside its tolerance window and a
`jti` it has already seen (replay), and may check that `htu` is its own endpoint.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from typing import Any

from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, KeySet
from joserfc.jws import JWSRegistry
from joserfc.registry import HeaderParameter

SIGNATURE_HEADER = "X-Signature"
SIGNATURE_ALG = "ES256"

_HEADERS = {
    "iat": HeaderParameter("Issued at (Unix seconds)", "int", True),
    "jti": HeaderParameter("Unique id of this signature", "str", True),
    "htu": HeaderParameter("The endpoint the notification was sent to", "str"),
}


def _registry() -> JWSRegistry:
    registry = JWSRegistry(header_registry=_HEADERS, algorithms=[SIGNATURE_ALG])
    # Full-resource notifications can be large; the payload limit guards parsing of
    # untrusted tokens, and here the payload is the body we were handed anyway.
    registry.max_payload_length = 64 * 1024 * 1024
    # The header carries the endpoint URL (`htu`), which can be longer than the default.
    registry.max_header_length = 8192
    return registry


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def sign_detached(body: bytes, key: ECKey, *, endpoint: str, now: float | None = None) -> str:
    """The `X-Signature` value for `body`, signed by the sandbox key `key`."""
    header: dict[str, Any] = {
        "alg": SIGNATURE_ALG,
        "kid": key.kid,
        "typ": "JOSE",
        "iat": int(time.time() if now is None else now),
        "jti": uuid.uuid4().hex,
        "htu": endpoint,
    }
    compact = jws.serialize_compact(header, body, key, registry=_registry())
    protected, _payload, signature = compact.split(".")
    return f"{protected}..{signature}"


class SignatureInvalid(Exception):
    """A notification signature that does not verify (the message says why)."""


def verify_detached(
    signature: str,
    body: bytes,
    jwks: dict[str, Any],
    *,
    max_age_s: float = 300,
    seen_jti: set[str] | None = None,
    now: float | None = None,
) -> dict[str, Any]:
    """Verify an `X-Signature` against the exact body bytes; returns the protected header.

    The reference check a receiver performs: signature (ES256, key by `kid`), `iat` within
    `max_age_s`, and `jti` not in `seen_jti` (which it then records).
    """
    parts = signature.split(".")
    if len(parts) != 3 or parts[1] != "":
        raise SignatureInvalid("Not a detached JWS compact serialization")
    compact = f"{parts[0]}.{_b64url(body)}.{parts[2]}"
    try:
        header = json.loads(base64.urlsafe_b64decode(parts[0] + "=" * (-len(parts[0]) % 4)))
    except (ValueError, UnicodeDecodeError) as exc:
        raise SignatureInvalid("Unreadable protected header") from exc
    if not isinstance(header, dict) or header.get("alg") != SIGNATURE_ALG:
        raise SignatureInvalid("alg must be ES256")
    try:
        keyset = KeySet.import_key_set(jwks)  # type: ignore[arg-type]
        jws.deserialize_compact(compact, keyset, registry=_registry())
    except (JoseError, ValueError, TypeError, KeyError) as exc:
        raise SignatureInvalid("Signature does not verify") from exc
    moment = time.time() if now is None else now
    iat = header.get("iat")
    if not isinstance(iat, int) or abs(moment - iat) > max_age_s:
        raise SignatureInvalid("iat is outside the accepted window")
    jti = header.get("jti")
    if not isinstance(jti, str) or not jti:
        raise SignatureInvalid("jti is missing")
    if seen_jti is not None:
        if jti in seen_jti:
            raise SignatureInvalid("jti was already seen (replay)")
        seen_jti.add(jti)
    return header
