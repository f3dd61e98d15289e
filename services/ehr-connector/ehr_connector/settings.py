"""Settings of the ehr-connector service (environment variables, local defaults)."""

from __future__ import annotations

from servicekit.settings import ServiceSettings


class Settings(ServiceSettings):
    """The only service that speaks FHIR to the EHR."""

    service_name: str = "ehr-connector"
    http_port: int = 8005
