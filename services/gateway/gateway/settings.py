"""Settings of the gateway service (environment variables, local defaults)."""

from __future__ import annotations

from servicekit.settings import ServiceSettings


class Settings(ServiceSettings):
    """Patient API, real-time stream and portal page."""

    service_name: str = "gateway"
    http_port: int = 8000
