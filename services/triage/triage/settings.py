"""Settings of the triage service (environment variables, local defaults)."""

from __future__ import annotations

from pydantic import Field

from servicekit.crypto import EncryptionSettings
from servicekit.settings import ServiceSettings


class Settings(ServiceSettings, EncryptionSettings):
    """Symptom triage before a visit: a rule engine, optionally reviewed by a language model."""

    service_name: str = "triage"
    http_port: int = 8004
    triage_rules_dir: str = Field(
        default="", description="Folder with rules.yaml and concepts.yaml; empty = packaged"
    )
    triage_llm_url: str = Field(
        default="",
        description="Base URL of an OpenAI-compatible chat API (…/v1); empty = no model (default)",
    )
    triage_llm_model: str = Field(default="triage-review", description="Model name to request")
    triage_llm_api_key: str = Field(default="", description="Bearer token for the model API")
    triage_llm_timeout_s: float = Field(
        default=8.0, description="After this the rules' result stands alone"
    )
