"""Configuration of the EHR sandbox, read from `SANDBOX_*` environment variables."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class SandboxSettings(BaseSettings):
    """Settings of the sandbox. Defaults run locally with nothing installed."""

    model_config = SettingsConfigDict(env_prefix="SANDBOX_", extra="ignore")

    database_url: str = Field(
        default="",
        description="PostgreSQL URL (run with asyncpg); `make up` sets it",
    )
    admin_token: str = Field(
        default="dev-admin-token", description="Bearer token with full access to every API"
    )
    dev_mode: bool = Field(default=True, description="Expose /dev/* conveniences")
    base_url: str = Field(
        default="http://127.0.0.1:8090", description="Public base URL (links, Location)"
    )
    seed: bool = Field(default=True, description="Load the demo clinic on first start")
    examples_dir: Path | None = Field(
        default=None,
        description="Official FHIR R4 examples for the seed; default ../shared/fhir-examples",
    )
    clinic_timezone: str = Field(
        default="America/New_York", description="Time zone of the clinic's opening hours"
    )
    log_level: str = "INFO"
    log_format: str = Field(default="json", description="json, or console for humans")
    default_page_size: int = Field(default=20, ge=1)
    max_page_size: int = Field(default=500, ge=1)

    @property
    def fhir_base(self) -> str:
        """The FHIR service base URL, as it appears in links and Location headers."""
        return self.base_url.rstrip("/") + "/fhir"

    def resolved_database_url(self) -> str:
        """The async SQLAlchemy URL (asyncpg); a clear error when none is configured."""
        url = self.database_url
        for prefix in ("postgresql://", "postgres://"):
            if url.startswith(prefix):
                return "postgresql+asyncpg://" + url[len(prefix) :]
        if url.startswith("postgresql+asyncpg://"):
            return url
        if not url:
            raise ValueError(
                "SANDBOX_DATABASE_URL is not set: run the sandbox with `make up` (it starts an "
                "embedded PostgreSQL) or set it to postgresql://user:password@host/database"
            )
        raise ValueError(
            f"SANDBOX_DATABASE_URL must be a PostgreSQL URL, not {url.split(':')[0]!r}"
        )
