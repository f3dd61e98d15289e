"""Validation of incoming FHIR resources with the `fhir.resources.R4B` models.

The sandbox speaks FHIR R4 (4.0.1). `fhir.resources` 8 ships R5 (default), R4B and STU3
models; R4B is the release whose models accept R4 payloads (R5 changed several elements
the project uses, e.g. `Appointment.serviceType`), so R4B is what validates here. The
models are only a gate: the stored JSON is exactly what the client sent, plus `meta`.
"""

from __future__ import annotations

import json
from functools import cache
from typing import Any

from fhir.resources.R4B import get_fhir_model_class
from pydantic import ValidationError

from ehr_sandbox.fhir.outcomes import FhirError, issues_from_errors
from ehr_sandbox.fhir.resource_types import is_supported
from ehr_sandbox.search import is_valid_id

FHIR_MEDIA_TYPES = frozenset({"application/fhir+json", "application/json", "application/json+fhir"})
MAX_BODY_BYTES = 5 * 1024 * 1024


@cache
def _model(resource_type: str) -> Any:
    return get_fhir_model_class(resource_type)


def media_type(content_type: str | None) -> str:
    """The bare media type of a Content-Type header value, lower-cased."""
    return (content_type or "").split(";", 1)[0].strip().lower()


def check_content_type(content_type: str | None) -> None:
    """415 unless the body is declared FHIR JSON (or plain JSON)."""
    if media_type(content_type) not in FHIR_MEDIA_TYPES:
        shown = media_type(content_type) or "none"
        raise FhirError(
            415,
            f"Unsupported Content-Type {shown}; send application/fhir+json",
            code="not-supported",
        )


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def parse_json_body(raw: bytes, *, what: str = "a FHIR resource") -> dict[str, Any]:
    """The request body as a JSON object; 413 if too large, 400 if not a JSON object."""
    if len(raw) > MAX_BODY_BYTES:
        raise FhirError(413, f"Body larger than {MAX_BODY_BYTES} bytes", code="too-costly")
    if not raw.strip():
        raise FhirError(400, f"Empty body: {what} is required", code="structure")
    try:
        # NaN/Infinity are not JSON; a lone surrogate (\ud800) cannot be stored or sent back.
        body = json.loads(raw, parse_constant=_reject_constant)
        json.dumps(body, ensure_ascii=False).encode("utf-8")
    except (UnicodeError, ValueError, RecursionError) as exc:
        reason = "too deeply nested" if isinstance(exc, RecursionError) else str(exc)
        raise FhirError(400, f"Body is not valid JSON: {reason}", code="structure") from exc
    if not isinstance(body, dict):
        raise FhirError(400, f"Body must be a JSON object ({what})", code="structure")
    return body


def check_resource_type(resource_type: str) -> None:
    """404 unless the sandbox serves `resource_type`."""
    if not is_supported(resource_type):
        raise FhirError(
            404, f"Unknown or unsupported resource type {resource_type}", code="not-supported"
        )


def check_id(resource_id: str) -> None:
    """400 unless `resource_id` is a valid FHIR logical id."""
    if not is_valid_id(resource_id):
        raise FhirError(400, f"Invalid resource id {resource_id!r}", code="invalid")


def validate_resource(
    resource: dict[str, Any], *, expected_type: str, expected_id: str | None = None
) -> None:
    """Check `resource` against the URL and the R4B model.

    400 for a missing or mismatching `resourceType` or (for updates) `id`; 422 with one issue
    per problem, each naming the element, when the resource is not valid FHIR.
    """
    declared = resource.get("resourceType")
    if declared is None:
        raise FhirError(400, "Missing resourceType", code="structure", expression=["resourceType"])
    if declared != expected_type:
        raise FhirError(
            400,
            f"resourceType {declared} does not match the URL ({expected_type})",
            code="invalid",
            expression=["resourceType"],
        )
    if expected_id is not None:
        body_id = resource.get("id")
        if body_id is None:
            raise FhirError(
                400,
                "The resource has no id; an update needs the id of the URL",
                code="required",
                expression=[f"{expected_type}.id"],
            )
        if body_id != expected_id:
            raise FhirError(
                400,
                f"Resource id {body_id} does not match the URL id {expected_id}",
                code="invalid",
                expression=[f"{expected_type}.id"],
            )
    try:
        _model(expected_type).model_validate(resource)
    except ValidationError as exc:
        raise FhirError(
            422,
            "Invalid resource",
            issues=issues_from_errors(expected_type, exc.errors()),
        ) from exc
    except (ValueError, TypeError) as exc:
        raise FhirError(422, f"Invalid resource: {exc}", code="invalid") from exc
