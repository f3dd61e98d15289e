"""Settings of the scheduling service (environment variables, local defaults)."""

from __future__ import annotations

from servicekit.settings import ServiceSettings


class Settings(ServiceSettings):
    """Slots, appointments and digital intake."""

    service_name: str = "scheduling"
    http_port: int = 8002
