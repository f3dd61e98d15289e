"""Settings of the records service (environment variables, local defaults)."""

from __future__ import annotations

from servicekit.crypto import EncryptionSettings
from servicekit.settings import ServiceSettings


class Settings(ServiceSettings, EncryptionSettings):
    """Read model of the patient's chart."""

    service_name: str = "records"
    http_port: int = 8001
