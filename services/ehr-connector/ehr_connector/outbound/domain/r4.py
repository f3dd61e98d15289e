"""The gate every outbound resource passes: it must be valid FHIR R4.

Why `fhir.resources.R4B`: the EHR speaks FHIR R4 (4.0.1), and fhir.resources 8 ships R5
(its default), R4B and STU3 models but no R4 module (6.5.0, the last with R4, does not
import under pydantic 2). R4B (4.3.0) is R4 with a handful of additions, and R4 resources
validate with the R4B models, while R5 rejects R4 shapes (e.g. Appointment's
`serviceType`). The resources we write use only elements that exist in R4, so an R4B
validation is an R4 validation for them. The sandbox validates with the same models.

What the models check: element names (an unknown or misspelt element fails), types and
formats (ids, instants, dates, URIs), required elements. What they do not: terminology
bindings (a status outside its value set) and invariants; the mapping modules take codes
from constants and their unit tests pin them.

We validate the dict we built and send that dict, not the model's re-serialisation, so the
EHR gets exactly what we meant (no normalisation of times or element order).
"""

from __future__ import annotations

from typing import Any

from fhir.resources.R4B import get_fhir_model_class
from pydantic import ValidationError

from servicekit.errors import PermanentError, describe


class InvalidResource(PermanentError):
    """A resource we built (or re-applied onto EHR state) is not valid R4."""


def validate(resource: dict[str, Any]) -> dict[str, Any]:
    """Return `resource` if the R4B model of its type accepts it, else `InvalidResource`."""
    resource_type = resource.get("resourceType")
    if not isinstance(resource_type, str):
        raise InvalidResource("resource has no resourceType")
    try:
        model = get_fhir_model_class(resource_type)
    except (KeyError, ValueError) as exc:
        raise InvalidResource(f"unknown resource type {resource_type}") from exc
    try:
        model.model_validate(resource)
    except ValidationError as exc:
        raise InvalidResource(f"invalid {resource_type}: {describe(exc)}") from exc
    return resource
