"""Envelope encryption: round trips, binding to the row, rotation by re-wrapping."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from servicekit.crypto import (
    Cipher,
    DecryptionError,
    EncryptionSettings,
    Keyring,
    KeyringError,
    key_id_of,
    new_key,
)


def _ring(active: str, *ids: str) -> tuple[Keyring, dict[str, str]]:
    keys = {i: new_key() for i in ids}
    settings = EncryptionSettings(encryption_keys=keys, encryption_active_key=active)
    return Keyring.from_settings(settings, "prod"), keys


def test_a_value_round_trips_and_its_ciphertext_hides_the_text() -> None:
    ring, _ = _ring("k1", "k1")
    cipher = Cipher(ring)
    envelope = cipher.encrypt_text("I have chest pain", "messages.body:m1")
    assert b"chest" not in envelope
    assert key_id_of(envelope) == "k1"
    assert cipher.decrypt_text(envelope, "messages.body:m1") == "I have chest pain"
    # Two encryptions of one text differ (fresh data key and nonce each time).
    assert cipher.encrypt_text("same", "a") != cipher.encrypt_text("same", "a")


def test_a_ciphertext_moved_to_another_row_or_damaged_does_not_open() -> None:
    cipher = Cipher(_ring("k1", "k1")[0])
    envelope = cipher.encrypt_text("secret", "messages.body:m1")
    with pytest.raises(DecryptionError):
        cipher.decrypt_text(envelope, "messages.body:m2")
    damaged = envelope[:-1] + bytes([envelope[-1] ^ 1])
    with pytest.raises(DecryptionError):
        cipher.decrypt_text(damaged, "messages.body:m1")
    with pytest.raises(DecryptionError):
        cipher.decrypt_text(b"plain text", "messages.body:m1")


def test_rotation_old_rows_stay_readable_new_rows_use_the_new_key_rewrap_moves_them() -> None:
    old_ring, keys = _ring("2026-11", "2026-11")
    old = Cipher(old_ring).encrypt_text("before rotation", "t:1")
    keys["2026-12"] = new_key()
    rotated = Cipher(
        Keyring.from_settings(
            EncryptionSettings(encryption_keys=keys, encryption_active_key="2026-12"), "prod"
        )
    )
    assert rotated.decrypt_text(old, "t:1") == "before rotation"
    assert key_id_of(rotated.encrypt_text("after", "t:2")) == "2026-12"
    assert rotated.needs_rewrap(old)
    moved = rotated.rewrap(old)
    assert key_id_of(moved) == "2026-12" and not rotated.needs_rewrap(moved)
    # The old key can be retired once everything is re-wrapped.
    retired = Cipher(Keyring({"2026-12": base64.b64decode(keys["2026-12"])}, "2026-12"))
    assert retired.decrypt_text(moved, "t:1") == "before rotation"
    with pytest.raises(DecryptionError, match="not in the keyring"):
        retired.decrypt_text(old, "t:1")


def test_keyring_configuration_errors_are_clear_and_prod_has_no_default_key() -> None:
    with pytest.raises(KeyringError, match="must be set in production"):
        Keyring.from_settings(EncryptionSettings(), "prod")
    assert Keyring.from_settings(EncryptionSettings(), "dev").active == "dev-1"
    with pytest.raises(KeyringError, match="not 32 bytes"):
        Keyring.from_settings(
            EncryptionSettings(encryption_keys={"k": base64.b64encode(b"short").decode()}), "prod"
        )
    with pytest.raises(KeyringError, match="not in the keyring"):
        Keyring.from_settings(
            EncryptionSettings(encryption_keys={"k": new_key()}, encryption_active_key="x"),
            "prod",
        )
    with pytest.raises(KeyringError, match="must name one"):
        Keyring.from_settings(
            EncryptionSettings(encryption_keys={"a": new_key(), "b": new_key()}), "prod"
        )


def test_keys_from_a_mounted_file_replace_the_environment(tmp_path: Path) -> None:
    old, new = new_key(), new_key()
    keys_file = tmp_path / "keys.json"
    keys_file.write_text(
        json.dumps({"keys": {"2026-11": old, "2026-12": new}, "active": "2026-12"})
    )
    settings = EncryptionSettings(
        encryption_keys_file=str(keys_file), encryption_keys={"ignored": new_key()}
    )
    ring = Keyring.from_settings(settings, "prod")
    assert ring.active == "2026-12"
    before = Cipher(
        Keyring.from_settings(EncryptionSettings(encryption_keys={"2026-11": old}), "prod")
    )
    sealed = before.encrypt_text("text", "aad")
    assert Cipher(ring).decrypt_text(sealed, "aad") == "text"
    keys_file.write_text("{not json")
    with pytest.raises(KeyringError, match="ENCRYPTION_KEYS_FILE"):
        Keyring.from_settings(settings, "prod")
    missing = EncryptionSettings(encryption_keys_file=str(tmp_path / "absent.json"))
    with pytest.raises(KeyringError, match="ENCRYPTION_KEYS_FILE"):
        Keyring.from_settings(missing, "dev")
