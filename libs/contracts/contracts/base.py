"""Building blocks shared by every event payload: the base model and clinical value types."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

# Lax pydantic accepts `0` as a datetime (schemathesis found it); payload times are strict
# ISO-8601 strings with an offset, and must name their time zone.
Instant = Annotated[AwareDatetime, Field(strict=True)]
InternalId = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._:-]+$")]
FhirId = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9\-.]{1,64}$")]


class Payload(BaseModel):
    """Base of every event payload: immutable, and tolerant of fields added later."""

    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True)


class Coding(Payload):
    """A code in a code system (LOINC, SNOMED CT, RxNorm, ...), as FHIR's Coding."""

    system: str = Field(description="Code system URI, e.g. http://loinc.org")
    code: str
    display: str | None = None


class Quantity(Payload):
    """A measured amount with its UCUM unit."""

    value: float
    unit: str | None = None
    system: str | None = Field(default="http://unitsofmeasure.org")
    code: str | None = None


class ReferenceRange(Payload):
    """The normal range for a result, as the lab reported it."""

    low: Quantity | None = None
    high: Quantity | None = None
    text: str | None = None


class SourceVersion(Payload):
    """Where a fact came from in the EHR, so consumers can ignore stale updates."""

    resource_type: str
    fhir_id: FhirId
    version_id: str
    last_updated: Instant


def utc_now() -> datetime:
    """The current time, with its time zone (every payload time carries one)."""
    from datetime import UTC

    return datetime.now(UTC)
