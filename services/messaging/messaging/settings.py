"""Settings of the messaging service (environment variables, local defaults)."""

from __future__ import annotations

from servicekit.settings import ServiceSettings


class Settings(ServiceSettings):
    """Secure messages between patients and the care team."""

    service_name: str = "messaging"
    http_port: int = 8003
