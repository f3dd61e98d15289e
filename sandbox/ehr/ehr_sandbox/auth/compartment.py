"""Keeping patient tokens inside their own patient compartment.

A patient token may read only what concerns its patient:
- instance reads (`read`, `vread`, instance `history`, instance operations): the resource
  must be the patient, or reference the patient somewhere (`subject`, `patient`,
  `participant.actor`, `recipient`, ...), else 403;
- searches: the query must pin the patient through a reference parameter the type has
  (`patient` or `subject`; `_id` for Patient), with every value the token's patient, so
  the database can only return the patient's resources, else 403;
- type-level history and type-level operations: 403.
"""

from __future__ import annotations

from typing import Any

from fastapi import Request

from ehr_sandbox.fhir.outcomes import FhirError
from ehr_sandbox.fhir.resource_types import params_for
from ehr_sandbox.search import parse_reference

_PATIENT_PARAMS = ("patient", "subject")
_ID_KEYS = ("resource_id", "patient_id", "id")
_VERSION_KEYS = ("vid", "version_id", "version")


def _forbidden(diagnostics: str) -> FhirError:
    return FhirError(
        403,
        diagnostics,
        code="forbidden",
        headers={"WWW-Authenticate": 'Bearer realm="ehr-sandbox", error="insufficient_scope"'},
    )


def _all_references(node: Any) -> list[str]:
    found: list[str] = []
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for key, value in item.items():
                if key == "reference" and isinstance(value, str):
                    found.append(value)
                elif key != "contained":
                    stack.append(value)
        elif isinstance(item, list):
            stack.extend(item)
    return found


def in_compartment(resource: dict[str, Any], patient_id: str, fhir_base: str) -> bool:
    """Whether `resource` is the patient or references the patient."""
    if resource.get("resourceType") == "Patient":
        return resource.get("id") == patient_id
    for reference in _all_references(resource):
        parsed = parse_reference(reference, fhir_base)
        if parsed == ("Patient", patient_id):
            return True
    return False


def _path_value(request: Request, keys: tuple[str, ...]) -> str | None:
    for key in keys:
        value = request.path_params.get(key)
        if isinstance(value, str) and value:
            return value
    return None


def _is_own(value: str, patient_id: str, fhir_base: str) -> bool:
    if value == patient_id:
        return True
    return parse_reference(value, fhir_base) == ("Patient", patient_id)


def _search_pins_patient(
    request: Request, resource_type: str, patient_id: str, fhir_base: str
) -> bool:
    if resource_type == "Patient":
        names: tuple[str, ...] = ("_id",)
    else:
        params = params_for(resource_type)
        names = tuple(
            name for name in _PATIENT_PARAMS if name in params and params[name].type == "reference"
        )
    for name, raw in request.query_params.multi_items():
        base, _, modifier = name.partition(":")
        if base not in names or modifier not in ("", "Patient"):
            continue
        values = [v for v in raw.split(",") if v]
        if values and all(_is_own(v, patient_id, fhir_base) for v in values):
            return True
    return False


async def _stored_content(
    request: Request, resource_type: str, resource_id: str
) -> dict[str, Any] | None:
    store = request.app.state.store
    try:
        return dict((await store.read(resource_type, resource_id)).content)
    except FhirError as exc:
        if exc.status == 404:
            return None
        if exc.status != 410:
            raise
    # Deleted: judge by the last content (the tombstone carries it).
    page = await store.history(resource_type, resource_id, since=None, count=1, offset=0)
    return dict(page.entries[0].content) if page.entries else None


async def check_patient_access(
    request: Request, resource_type: str, interaction: str, patient_id: str
) -> None:
    """Raise 403 unless a patient token's request stays within its compartment."""
    fhir_base: str = request.app.state.settings.fhir_base
    resource_id = _path_value(request, _ID_KEYS)
    if interaction == "search" or (interaction == "history" and resource_id is None):
        if interaction == "history" or not _search_pins_patient(
            request, resource_type, patient_id, fhir_base
        ):
            raise _forbidden(
                "A patient token may only search its own records: add "
                + (
                    "_id=<your patient id>"
                    if resource_type == "Patient"
                    else "patient=<your patient id>"
                )
            )
        return
    if resource_id is None:
        raise _forbidden("A patient token may not use type-level operations")
    content = await _stored_content(request, resource_type, resource_id)
    if content is None:
        # Unknown resource: let the route answer 404 as it would for anyone.
        return
    if not in_compartment(content, patient_id, fhir_base):
        raise _forbidden("This resource is outside the patient's compartment")
    version = _path_value(request, _VERSION_KEYS)
    if version is not None and version.isdigit():
        try:
            old = await request.app.state.store.vread(resource_type, resource_id, int(version))
        except FhirError:
            return
        if not in_compartment(dict(old.content), patient_id, fhir_base):
            raise _forbidden("This version is outside the patient's compartment")
