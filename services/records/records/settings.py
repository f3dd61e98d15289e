"""Settings of the records service (environment variables, local defaults)."""

from __future__ import annotations

from pydantic import Field

from servicekit.crypto import EncryptionSettings
from servicekit.settings import ServiceSettings


class Settings(ServiceSettings, EncryptionSettings):
    """Read model of the patient's chart."""

    service_name: str = "records"
    http_port: int = 8001
    chart_read_cache_mb: float = Field(
        default=32,
        ge=0,
        description="Memory for the answers of chart reads, given again while the chart "
        "keeps its version (records.read_cache); 0: every read is computed",
    )
