"""Settings of the messaging service (environment variables, local defaults)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from servicekit.crypto import EncryptionSettings
from servicekit.settings import ServiceSettings

DEFAULT_ROUTING_FILE = Path(__file__).resolve().parent / "data" / "routing.yaml"


class Settings(ServiceSettings, EncryptionSettings):
    """Secure messages between patients and the care team."""

    service_name: str = "messaging"
    http_port: int = 8003

    routing_file: Path = Field(
        default=DEFAULT_ROUTING_FILE, description="Routing rules (topics, keywords → pools)"
    )
    triage_url: str = Field(
        default="http://127.0.0.1:8004", description="Triage service (emergency check)"
    )
    emergency_check_timeout_s: float = Field(
        default=3.0, gt=0, description="Longest wait for the emergency check"
    )
    rate_limit_messages: int = Field(
        default=10, ge=1, description="Messages a patient may send per rate-limit window"
    )
    rate_limit_window_s: int = Field(default=300, ge=1, description="The rate-limit window")
    body_max_chars: int = Field(default=10_000, ge=1, le=10_000, description="Message text")
    attachment_max_bytes: int = Field(
        default=256 * 1024,
        ge=1,
        le=320 * 1024,
        description="Size of one attachment (sent inline in events: stay under the broker limit)",
    )
    attachments_max_count: int = Field(default=2, ge=0, description="Attachments per message")
    rotation_batch_size: int = Field(default=200, ge=1, description="Rows per re-encrypt step")
