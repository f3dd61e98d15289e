"""What every FHIR → event mapping shares: outcomes, context, source versions, quantities.

A mapping is a pure function of a FHIR resource (plus the related resources it needs,
already read) to a `contracts` payload, or to a `Rejected` (the resource cannot be mapped:
the reason is recorded and shown to operators) or a `Skipped` (nothing to publish, by
rule: a preliminary report, a message from the patient). Mappings never raise for bad
input: every way a vendor resource can be odd ends in one of the three outcomes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from contracts.base import Payload, Quantity, SourceVersion
from ehr_connector.inbound.domain.fhir_values import FHIR_ID, Ref, Resource, meta_version
from servicekit.errors import describe

LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
UCUM = "http://unitsofmeasure.org"


@dataclass(frozen=True)
class Rejected:
    """The resource cannot be mapped; `reason` says why (no resource content in it)."""

    reason: str


@dataclass(frozen=True)
class Skipped:
    """Nothing to publish for this resource, by rule (not an error)."""

    reason: str


@dataclass(frozen=True)
class MappingContext:
    """What a mapping may use besides the resource itself.

    `patient_id` is the internal (portal) id of the patient the event is for; `related`
    holds resources the mapping asked for (`Mapper.needs`), by `Type/id`; `deleted` says the
    event is the resource's deletion (the resource is then its last content).
    """

    patient_id: str
    related: Mapping[str, Resource] = field(default_factory=dict)
    appointment_identifier_system: str | None = None
    deleted: bool = False

    def get(self, ref: Ref | None) -> Resource | None:
        """A related resource by reference, if it was read."""
        if ref is None:
            return None
        return self.related.get(ref.key)


MappingResult = Payload | Rejected | Skipped


def source_version(resource: Resource) -> SourceVersion | Rejected:
    """Where the fact came from, for consumers' stale-update checks."""
    resource_type = resource.get("resourceType")
    resource_id = resource.get("id")
    if not isinstance(resource_type, str) or not isinstance(resource_id, str):
        return Rejected("The resource has no type or id.")
    if not FHIR_ID.match(resource_id):
        return Rejected("The resource id is not a valid FHIR id.")
    version, last_updated = meta_version(resource)
    if version is None or last_updated is None:
        return Rejected("The resource has no meta.versionId or meta.lastUpdated.")
    return SourceVersion(
        resource_type=resource_type,
        fhir_id=resource_id,
        version_id=version,
        last_updated=last_updated,
    )


def fhir_id(value: Any) -> str | None:
    """`value` when it is a valid FHIR logical id."""
    return value if isinstance(value, str) and FHIR_ID.match(value) else None


def quantity(element: Any) -> Quantity | None:
    """A FHIR Quantity with a numeric value (the unit from `unit`, else `code`)."""
    if not isinstance(element, dict):
        return None
    value = element.get("value")
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    unit = element.get("unit") if isinstance(element.get("unit"), str) else None
    code = element.get("code") if isinstance(element.get("code"), str) else None
    system = element.get("system") if isinstance(element.get("system"), str) else None
    return Quantity(value=float(value), unit=unit or code, system=system or UCUM, code=code)


def render_quantity(element: Any) -> str | None:
    """A quantity as text (`7.2 mmol/L`, with its comparator)."""
    q = quantity(element)
    if q is None:
        return None
    comparator = element.get("comparator") if isinstance(element, dict) else None
    prefix = comparator if isinstance(comparator, str) else ""
    number = f"{q.value:g}"
    return f"{prefix}{number} {q.unit}".strip() if q.unit else f"{prefix}{number}"


def build(model: type[Payload], values: dict[str, Any]) -> Payload | Rejected:
    """The payload, or a rejection naming the fields the contract refused."""
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        return Rejected(f"Does not fit {model.__name__}: {describe(exc)}")


def clip(text: str | None, limit: int) -> str | None:
    """`text` cut to `limit` characters (contract fields are bounded)."""
    if text is None:
        return None
    return text if len(text) <= limit else text[: limit - 1] + "…"
