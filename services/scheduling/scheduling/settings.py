"""Settings of the scheduling service (environment variables, local defaults)."""

from __future__ import annotations

from pydantic import Field

from servicekit.settings import ServiceSettings


class Settings(ServiceSettings):
    """Slots, appointments and digital intake."""

    service_name: str = "scheduling"
    http_port: int = 8002
    intake_questionnaire: str = Field(
        default="http://example.org/fhir/ehr-sandbox/Questionnaire/intake|1",
        description="Canonical URL (with version) of the EHR's intake Questionnaire",
    )
