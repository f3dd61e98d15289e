"""Envelope encryption of sensitive columns at rest (AES-256-GCM), with key rotation.

Each value is encrypted with its own random data key (DEK); the DEK is wrapped with a
key-encryption key (KEK) from configuration, named by a key id. The envelope stores the
key id, the wrapped DEK and the ciphertext together, so a row is self-describing: after a
rotation (a new active key id) old rows stay readable with the old KEK, new rows use the new
one, and re-encrypting an old row only re-wraps its small DEK (`Cipher.rewrap`); the body
ciphertext is kept. A service also stores the key id in a plain column beside the envelope
so "rows not yet on the active key" is one indexed query.

Every encryption binds associated data (`aad`: table, column, row id) into the GCM tag, so a
ciphertext copied into another row or column fails to decrypt instead of showing the wrong
patient's text.

Keys come from settings (`EncryptionSettings`): `ENCRYPTION_KEYS` is a JSON object of key
id → base64 of 32 random bytes, `ENCRYPTION_ACTIVE_KEY` names the one new rows use. Outside
production a built-in development key is used when none are configured; in production a
missing or malformed keyring is a start-up error, never a silent fallback.

Envelope layout (bytes): version 0x01 | key-id length (1 byte) | key id (ASCII) |
DEK nonce (12) | wrapped DEK (32 + 16 tag) | nonce (12) | ciphertext + tag (16).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pydantic import Field
from pydantic_settings import BaseSettings

_VERSION = 1
_NONCE = 12
_KEY_BYTES = 32
_WRAPPED_DEK = _KEY_BYTES + 16
_KEY_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
DEV_KEY_ID = "dev-1"
# Development only (refused in production): lets `make up` and tests run with nothing set.
_DEV_KEY = hashlib.sha256(b"patient-portal development key; never used in production").digest()


class KeyringError(ValueError):
    """The configured keys are unusable (missing, malformed, or the active one unknown)."""


class DecryptionError(ValueError):
    """A value could not be decrypted: unknown key id, damaged or moved ciphertext."""


class EncryptionSettings(BaseSettings):
    """The keyring of a service, from the environment (mixed into its settings class)."""

    encryption_keys: dict[str, str] = Field(
        default_factory=dict,
        description='Key id → base64 of a 32-byte key, JSON (e.g. {"2026-12": "..."}); '
        "empty outside prod = the built-in development key",
    )
    encryption_active_key: str = Field(
        default="", description="Key id new values are encrypted with; empty = the only key"
    )
    encryption_keys_file: str = Field(
        default="",
        description='A mounted file holding {"keys": {id: base64}, "active": id}, read at '
        "start instead of ENCRYPTION_KEYS/ENCRYPTION_ACTIVE_KEY (a rotation changes the file "
        "and restarts the service)",
    )


@dataclass(frozen=True)
class Keyring:
    """Key-encryption keys by id, and the id new values use."""

    keys: Mapping[str, bytes]
    active: str

    def __post_init__(self) -> None:
        if not self.keys:
            raise KeyringError("no encryption keys are configured")
        for key_id, key in self.keys.items():
            if not _KEY_ID.match(key_id):
                raise KeyringError(f"key id {key_id!r} is not 1-64 of [A-Za-z0-9._-]")
            if len(key) != _KEY_BYTES:
                raise KeyringError(f"key {key_id!r} is not {_KEY_BYTES} bytes")
        if self.active not in self.keys:
            raise KeyringError(f"the active key id {self.active!r} is not in the keyring")

    @classmethod
    def from_settings(cls, settings: EncryptionSettings, environment: str) -> Keyring:
        """The keyring the settings describe (the development key outside prod if none)."""
        if settings.encryption_keys_file:
            return cls._from_file(Path(settings.encryption_keys_file))
        if not settings.encryption_keys:
            if environment == "prod":
                raise KeyringError("ENCRYPTION_KEYS must be set in production")
            return cls({DEV_KEY_ID: _DEV_KEY}, DEV_KEY_ID)
        return cls._of(settings.encryption_keys, settings.encryption_active_key)

    @classmethod
    def _from_file(cls, path: Path) -> Keyring:
        try:
            content = json.loads(path.read_text(encoding="utf-8"))
            keys, active = content["keys"], content.get("active", "")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise KeyringError(
                f"ENCRYPTION_KEYS_FILE {path} is not readable as "
                '{"keys": {id: base64}, "active": id}'
            ) from exc
        if not isinstance(keys, dict) or not keys or not isinstance(active, str):
            raise KeyringError(f"ENCRYPTION_KEYS_FILE {path} names no keys")
        return cls._of({str(k): str(v) for k, v in keys.items()}, active)

    @classmethod
    def _of(cls, configured: Mapping[str, str], active: str) -> Keyring:
        keys: dict[str, bytes] = {}
        for key_id, text in configured.items():
            try:
                keys[key_id] = base64.b64decode(text, validate=True)
            except (binascii.Error, ValueError) as exc:
                raise KeyringError(f"key {key_id!r} is not valid base64") from exc
        if not active:
            if len(keys) != 1:
                raise KeyringError("ENCRYPTION_ACTIVE_KEY must name one of several keys")
            active = next(iter(keys))
        return cls(keys, active)


def new_key() -> str:
    """A fresh random key, base64, for `ENCRYPTION_KEYS` (ops: generating a rotation key)."""
    return base64.b64encode(os.urandom(_KEY_BYTES)).decode()


def key_id_of(envelope: bytes) -> str:
    """The id of the key an envelope's data key is wrapped with."""
    return _parse(envelope)[0]


def _parse(envelope: bytes) -> tuple[str, bytes, bytes, bytes, bytes]:
    if len(envelope) < 2 or envelope[0] != _VERSION:
        raise DecryptionError("not an encrypted value of a known format")
    kid_len = envelope[1]
    pos = 2 + kid_len
    minimum = pos + _NONCE + _WRAPPED_DEK + _NONCE + 16
    if len(envelope) < minimum:
        raise DecryptionError("the encrypted value is truncated")
    try:
        key_id = envelope[2:pos].decode("ascii")
    except UnicodeDecodeError as exc:
        raise DecryptionError("the encrypted value's key id is damaged") from exc
    dek_nonce = envelope[pos : pos + _NONCE]
    pos += _NONCE
    wrapped = envelope[pos : pos + _WRAPPED_DEK]
    pos += _WRAPPED_DEK
    nonce = envelope[pos : pos + _NONCE]
    return key_id, dek_nonce, wrapped, nonce, envelope[pos + _NONCE :]


class Cipher:
    """Encrypts and decrypts values with a keyring (one per running service)."""

    def __init__(self, keyring: Keyring) -> None:
        self.keyring = keyring

    @property
    def active_key_id(self) -> str:
        """The key id new values are wrapped with."""
        return self.keyring.active

    def _kek(self, key_id: str) -> AESGCM:
        key = self.keyring.keys.get(key_id)
        if key is None:
            raise DecryptionError(f"key {key_id!r} is not in the keyring")
        return AESGCM(key)

    def _wrap(self, key_id: str, dek: bytes) -> bytes:
        nonce = os.urandom(_NONCE)
        # The key id is bound to the wrapped key: a relabelled envelope does not open.
        return nonce + self._kek(key_id).encrypt(nonce, dek, key_id.encode())

    def _unwrap(self, key_id: str, dek_nonce: bytes, wrapped: bytes) -> bytes:
        try:
            return self._kek(key_id).decrypt(dek_nonce, wrapped, key_id.encode())
        except InvalidTag as exc:
            raise DecryptionError("the data key does not open with its key id") from exc

    @staticmethod
    def _assemble(key_id: str, wrapped: bytes, nonce: bytes, body: bytes) -> bytes:
        kid = key_id.encode("ascii")
        return bytes([_VERSION, len(kid)]) + kid + wrapped + nonce + body

    def encrypt(self, plaintext: bytes, aad: bytes) -> bytes:
        """An envelope of `plaintext` under the active key, bound to `aad`."""
        dek = AESGCM.generate_key(bit_length=256)
        nonce = os.urandom(_NONCE)
        body = AESGCM(dek).encrypt(nonce, plaintext, aad)
        key_id = self.keyring.active
        return self._assemble(key_id, self._wrap(key_id, dek), nonce, body)

    def decrypt(self, envelope: bytes, aad: bytes) -> bytes:
        """The plaintext of an envelope made with the same `aad` (any key in the ring)."""
        key_id, dek_nonce, wrapped, nonce, body = _parse(envelope)
        dek = self._unwrap(key_id, dek_nonce, wrapped)
        try:
            return AESGCM(dek).decrypt(nonce, body, aad)
        except InvalidTag as exc:
            raise DecryptionError("the value is damaged or belongs to another row") from exc

    def encrypt_text(self, text: str, aad: str) -> bytes:
        """`encrypt` for text (UTF-8)."""
        return self.encrypt(text.encode(), aad.encode())

    def decrypt_text(self, envelope: bytes, aad: str) -> str:
        """`decrypt` for text (UTF-8)."""
        return self.decrypt(envelope, aad.encode()).decode()

    def needs_rewrap(self, envelope: bytes) -> bool:
        """Whether an envelope's data key is wrapped with a key other than the active one."""
        return key_id_of(envelope) != self.keyring.active

    def rewrap(self, envelope: bytes) -> bytes:
        """The same value with its data key wrapped by the active key (rotation). The
        ciphertext is unchanged; the old key is needed to unwrap."""
        key_id, dek_nonce, wrapped, nonce, body = _parse(envelope)
        if key_id == self.keyring.active:
            return envelope
        dek = self._unwrap(key_id, dek_nonce, wrapped)
        active = self.keyring.active
        return self._assemble(active, self._wrap(active, dek), nonce, body)


def keyring_json(keys: Mapping[str, str]) -> str:
    """`ENCRYPTION_KEYS` as JSON text (for tests and ops tooling)."""
    return json.dumps(dict(keys))
