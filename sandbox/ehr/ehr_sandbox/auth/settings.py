"""Settings of the sandbox's authorisation server, read from `SANDBOX_*` variables.

They live beside, not inside, `SandboxSettings` so the auth server can be configured (and
tested) on its own; both read the same `SANDBOX_` environment namespace.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class AuthSettings(BaseSettings):
    """Token lifetimes, key rotation, client registration and the dev patient issuer."""

    model_config = SettingsConfigDict(env_prefix="SANDBOX_", extra="ignore")

    data_dir: Path = Field(
        default=Path(".data/ehr_sandbox"),
        description="Where signing keys and the dev client's key pair are kept",
    )
    clients_file: Path | None = Field(
        default=None,
        description=(
            "JSON file of backend clients: "
            '{"clients": [{"client_id": "...", "jwks": {"keys": [...]}, "scope": "..."}]}'
        ),
    )
    access_token_ttl_s: int = Field(default=300, ge=10, le=86_400)
    assertion_max_lifetime_s: int = Field(
        default=300, description="SMART: a client assertion's exp is at most 5 min ahead"
    )
    clock_skew_s: int = Field(default=30, ge=0, le=300)
    key_grace_s: int = Field(
        default=3600,
        ge=0,
        description="How long a rotated-out public key stays in the JWKS",
    )
    patient_audience: str = Field(
        default="portal", description="aud of patient access and id tokens (the portal client)"
    )
    patient_redirect_uris: list[str] = Field(
        default_factory=list,
        description=(
            "Redirect URIs the portal client may use; empty allows any http(s) URI on a "
            "loopback host (the local stack)"
        ),
    )
    auth_code_ttl_s: int = Field(default=60, ge=5, le=600)
    dev_client_id: str = "portal-connector"
    dev_client_scope: str = Field(
        default="system/*.cruds system/*.read system/*.write",
        description="Scopes the generated dev backend client may be granted",
    )
