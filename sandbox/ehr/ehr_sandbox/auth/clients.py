"""Registered SMART Backend Services clients and the dev default client's key pair.

A client is a `client_id` with the public JWKS its assertions are verified against and,
optionally, the scopes it may be granted. Clients come from three places: the JSON file
named by `SANDBOX_CLIENTS_FILE`, the admin-only `POST /auth/clients` (kept in the data
directory across restarts), and, in dev mode, `portal-connector`, whose key pair the
sandbox generates on first start so the local connector can authenticate without set-up.
"""

from __future__ import annotations

import json
import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from joserfc.errors import JoseError
from joserfc.jwk import ECKey, KeySet

from ehr_sandbox.auth.scopes import ScopeError, parse_scope, split_scope_string
from servicekit.logging import get_logger

ASSERTION_ALGORITHMS = ("RS384", "ES384")
_CLIENT_ID = re.compile(r"^[A-Za-z0-9._~-]{1,128}$")
# JWK members that only a private key has: a registration must never carry them.
_PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})

log = get_logger(__name__)


class ClientRegistrationError(ValueError):
    """A client registration that cannot be accepted (the message says why)."""


@dataclass
class Client:
    """A backend client allowed to request tokens with a signed assertion."""

    client_id: str
    jwks: dict[str, Any]
    scope: str | None = None
    name: str | None = None
    source: str = "api"
    _keyset: KeySet | None = field(default=None, repr=False, compare=False)

    @property
    def keyset(self) -> KeySet:
        """The client's public keys as a joserfc KeySet."""
        if self._keyset is None:
            self._keyset = KeySet.import_key_set(self.jwks)  # type: ignore[arg-type]
        return self._keyset

    def public_view(self) -> dict[str, Any]:
        """What the registration endpoint returns about this client."""
        view: dict[str, Any] = {
            "client_id": self.client_id,
            "jwks": self.jwks,
            "token_endpoint_auth_method": "private_key_jwt",
            "grant_types": ["client_credentials"],
        }
        if self.scope is not None:
            view["scope"] = self.scope
        if self.name is not None:
            view["client_name"] = self.name
        return view


def validate_registration(data: Any, source: str = "api") -> Client:
    """Build a `Client` from a registration document, or raise ClientRegistrationError."""
    if not isinstance(data, dict):
        raise ClientRegistrationError("A client registration must be a JSON object")
    client_id = data.get("client_id")
    if not isinstance(client_id, str) or not _CLIENT_ID.match(client_id):
        raise ClientRegistrationError(
            "client_id must be 1-128 characters of letters, digits and ._~-"
        )
    jwks = data.get("jwks")
    if not isinstance(jwks, dict) or not isinstance(jwks.get("keys"), list) or not jwks["keys"]:
        raise ClientRegistrationError('jwks must be a JWK Set with at least one key: {"keys": []}')
    for key in jwks["keys"]:
        if not isinstance(key, dict):
            raise ClientRegistrationError("Every JWK must be a JSON object")
        if _PRIVATE_MEMBERS & key.keys():
            raise ClientRegistrationError("jwks must hold public keys only")
        if key.get("kty") not in ("RSA", "EC"):
            raise ClientRegistrationError("Only RSA (RS384) and EC (ES384) keys are accepted")
        if key.get("kty") == "EC" and key.get("crv") != "P-384":
            raise ClientRegistrationError("EC keys must be on curve P-384 (ES384)")
    scope = data.get("scope")
    if scope is not None:
        if not isinstance(scope, str) or not scope.strip():
            raise ClientRegistrationError("scope must be a space-separated string")
        for token in split_scope_string(scope):
            try:
                parsed = parse_scope(token)
            except ScopeError as exc:
                raise ClientRegistrationError(str(exc)) from exc
            if parsed.context != "system":
                raise ClientRegistrationError("Backend clients may only hold system/ scopes")
    name = data.get("client_name")
    if name is not None and not isinstance(name, str):
        raise ClientRegistrationError("client_name must be a string")
    client = Client(client_id=client_id, jwks=jwks, scope=scope, name=name, source=source)
    try:
        _ = client.keyset
    except (JoseError, ValueError, TypeError, KeyError) as exc:
        raise ClientRegistrationError("jwks holds a key that cannot be imported") from exc
    return client


class ClientRegistry:
    """Backend clients by client_id; API registrations persist in the data directory."""

    def __init__(self, store_path: Path | None) -> None:
        self._store_path = store_path
        self._clients: dict[str, Client] = {}
        self._lock = threading.Lock()
        if store_path is not None and store_path.exists():
            self._load_file(store_path, source="api")

    def _load_file(self, path: Path, source: str) -> None:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            log.warning("clients_file_unreadable", source=source, error_type=type(exc).__name__)
            return
        items = data.get("clients", []) if isinstance(data, dict) else data
        if not isinstance(items, list):
            log.warning("clients_file_invalid", source=source)
            return
        for item in items:
            try:
                client = validate_registration(item, source=source)
            except ClientRegistrationError as exc:
                log.warning("client_skipped", source=source, reason=str(exc))
                continue
            self._clients[client.client_id] = client

    def load_clients_file(self, path: Path) -> None:
        """Register every client of a `SANDBOX_CLIENTS_FILE` (bad entries are skipped)."""
        self._load_file(path, source="file")

    def get(self, client_id: str) -> Client | None:
        """The client with this id, if registered."""
        with self._lock:
            return self._clients.get(client_id)

    def register(self, client: Client) -> None:
        """Add or replace a client; API registrations are written to the data directory."""
        with self._lock:
            self._clients[client.client_id] = client
            if client.source == "api":
                self._save()

    def _save(self) -> None:
        if self._store_path is None:
            return
        self._store_path.parent.mkdir(parents=True, exist_ok=True)
        items = [
            {
                "client_id": c.client_id,
                "jwks": c.jwks,
                **({"scope": c.scope} if c.scope else {}),
                **({"client_name": c.name} if c.name else {}),
            }
            for c in self._clients.values()
            if c.source == "api"
        ]
        tmp = self._store_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"clients": items}, indent=2), encoding="utf-8")
        tmp.replace(self._store_path)


@dataclass(frozen=True)
class DevClientFiles:
    """Where the dev client's key pair lives, and what a connector needs to use it."""

    client_id: str
    kid: str
    alg: str
    private_key_pem: Path
    private_key_jwk: Path
    public_jwks: dict[str, Any]


def ensure_dev_client(directory: Path, client_id: str) -> DevClientFiles:
    """Load the dev client's ES384 key pair from `directory`, generating it on first start."""
    directory.mkdir(parents=True, exist_ok=True)
    jwk_path = directory / f"{client_id}.private.jwk.json"
    pem_path = directory / f"{client_id}.private.pem"
    key: ECKey | None = None
    if jwk_path.exists():
        try:
            key = ECKey.import_key(json.loads(jwk_path.read_text(encoding="utf-8")))
        except (OSError, ValueError, JoseError) as exc:
            log.warning("dev_client_key_unreadable", error_type=type(exc).__name__)
            key = None
    if key is None or key.kid is None:
        key = ECKey.generate_key(
            "P-384",
            parameters={"kid": f"{client_id}-1", "use": "sig", "alg": "ES384"},
            private=True,
        )
        _write_private(jwk_path, json.dumps(key.as_dict(private=True), indent=2).encode())
        _write_private(pem_path, key.as_pem(private=True))
    elif not pem_path.exists():
        _write_private(pem_path, key.as_pem(private=True))
    assert key.kid is not None
    return DevClientFiles(
        client_id=client_id,
        kid=key.kid,
        alg="ES384",
        private_key_pem=pem_path.resolve(),
        private_key_jwk=jwk_path.resolve(),
        public_jwks={"keys": [key.as_dict(private=False)]},
    )


def _write_private(path: Path, content: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(content)
