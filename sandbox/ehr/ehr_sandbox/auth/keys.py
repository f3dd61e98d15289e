"""The sandbox's own signing keys: a key ring with rotation and a grace period.

The newest key signs every access token, id token and notification signature; its public
half, and that of every key rotated out less than `grace_s` ago, is published at
`/auth/jwks.json`, so tokens signed just before a rotation still verify until they expire.
Keys are EC P-256 (ES256) and are kept in a JSON file under the data directory, so a
restarted sandbox keeps accepting the tokens it issued.
"""

from __future__ import annotations

import json
import os
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from joserfc.jwk import ECKey, KeySet

from servicekit.logging import get_logger

SIGNING_ALG = "ES256"
_CURVE = "P-256"

log = get_logger(__name__)


@dataclass
class _RingKey:
    key: ECKey
    created_at: float
    retired_at: float | None = None

    @property
    def kid(self) -> str:
        kid = self.key.kid
        assert kid is not None
        return kid


def _new_key(now: float) -> _RingKey:
    # A random kid, not a thumbprint: a kid must never be reused even if a key were.
    kid = f"sbx-{int(now)}-{secrets.token_hex(4)}"
    key = ECKey.generate_key(
        _CURVE, parameters={"kid": kid, "use": "sig", "alg": SIGNING_ALG}, private=True
    )
    return _RingKey(key=key, created_at=now)


class SigningKeyRing:
    """Signing keys with a current key, rotated-out keys kept for a grace period."""

    def __init__(self, path: Path | None, grace_s: float) -> None:
        self._path = path
        self._grace_s = grace_s
        self._lock = threading.Lock()
        self._keys: list[_RingKey] = []
        self._public: tuple[tuple[str, ...], KeySet] | None = None
        if path is not None and path.exists():
            self._load(path)
        if not self._keys:
            self._keys.append(_new_key(time.time()))
            self._save()

    def _load(self, path: Path) -> None:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            for item in data["keys"]:
                key = ECKey.import_key(item["jwk"])
                self._keys.append(
                    _RingKey(
                        key=key,
                        created_at=float(item["created_at"]),
                        retired_at=None if item.get("retired_at") is None else item["retired_at"],
                    )
                )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            # A damaged key file must not stop the sandbox: start a fresh ring (tokens
            # issued before are then rejected, which a client handles by asking again).
            log.warning("signing_keys_unreadable", error_type=type(exc).__name__)
            self._keys = []

    def _save(self) -> None:
        if self._path is None:
            return
        self._path.parent.mkdir(parents=True, exist_ok=True)
        data = {
            "keys": [
                {
                    "jwk": k.key.as_dict(private=True),
                    "created_at": k.created_at,
                    "retired_at": k.retired_at,
                }
                for k in self._keys
            ]
        }
        tmp = self._path.with_suffix(".tmp")
        # Private keys: owner-only permissions from the moment the file exists.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle)
        tmp.replace(self._path)

    def _prune(self, now: float) -> None:
        self._keys = [
            k for k in self._keys if k.retired_at is None or now - k.retired_at < self._grace_s
        ]

    @property
    def current(self) -> ECKey:
        """The key that signs new tokens and notifications."""
        with self._lock:
            return self._keys[-1].key

    @property
    def current_kid(self) -> str:
        """The kid of the current signing key."""
        with self._lock:
            return self._keys[-1].kid

    def rotate(self) -> str:
        """Start signing with a new key; the old public key stays published for the grace."""
        now = time.time()
        with self._lock:
            self._keys[-1].retired_at = now
            self._keys.append(_new_key(now))
            self._prune(now)
            self._save()
            kid = self._keys[-1].kid
        log.info("signing_key_rotated", kid=kid)
        return kid

    def verification_keys(self) -> KeySet:
        """Public keys that verify tokens: the current key and those still in grace."""
        now = time.time()
        with self._lock:
            self._prune(now)
            kids = tuple(k.kid for k in self._keys)
            if self._public is None or self._public[0] != kids:
                # Built again only when the ring changed (a rotation, a key out of grace).
                public = KeySet(
                    [ECKey.import_key(k.key.as_dict(private=False)) for k in self._keys]
                )
                self._public = (kids, public)
            return self._public[1]

    def live_kids(self) -> frozenset[str]:
        """The kids of the keys that verify tokens now (the current one, those in grace)."""
        now = time.time()
        with self._lock:
            self._prune(now)
            return frozenset(k.kid for k in self._keys)

    def jwks(self) -> dict[str, Any]:
        """The public JWKS document (newest key first)."""
        now = time.time()
        with self._lock:
            self._prune(now)
            keys = [k.key.as_dict(private=False) for k in reversed(self._keys)]
        return {"keys": keys}
