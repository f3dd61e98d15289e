"""Settings of the triage service (environment variables, local defaults)."""

from __future__ import annotations

from servicekit.settings import ServiceSettings


class Settings(ServiceSettings):
    """AI-assisted triage before a visit."""

    service_name: str = "triage"
    http_port: int = 8004
