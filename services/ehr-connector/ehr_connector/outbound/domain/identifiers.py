"""Business identifiers the connector puts on what it writes, derived from our ids.

Every create is conditional on one of these (`If-None-Exist: identifier=<system>|<value>`),
so replaying an event never creates a second resource. Each portal object has a business
id of its own (appointment, intake, message, triage session); an event type without one
would use its event id under a system of its own.
"""

from __future__ import annotations

from typing import Any, Final
from urllib.parse import urlencode

IDENTIFIER_BASE: Final = "http://portal.example.org/fhir/sid"
APPOINTMENT_ID: Final = f"{IDENTIFIER_BASE}/appointment-id"
INTAKE_ID: Final = f"{IDENTIFIER_BASE}/intake-id"
MESSAGE_ID: Final = f"{IDENTIFIER_BASE}/message-id"
TRIAGE_SESSION_ID: Final = f"{IDENTIFIER_BASE}/triage-session-id"
# Our thread id on every Communication we file, so an answer to ANY message of a thread
# (its `inResponseTo`/`partOf` target) leads back to the patient's thread.
THREAD_EXTENSION: Final = "http://portal.example.org/fhir/StructureDefinition/portal-thread-id"


def identifier(system: str, value: str) -> dict[str, Any]:
    """A FHIR Identifier of ours."""
    return {"use": "usual", "system": system, "value": value}


def token(system: str, value: str) -> str:
    """The `system|value` token that searches for an identifier."""
    return f"{system}|{value}"


def if_none_exist(system: str, value: str) -> str:
    """The `If-None-Exist` condition for a resource with this identifier (URL-encoded)."""
    return urlencode([("identifier", token(system, value))])


def has_identifier(resource: dict[str, Any], system: str, value: str) -> bool:
    """Whether a resource carries this identifier (`identifier` may be one or a list)."""
    found = resource.get("identifier", [])
    items = found if isinstance(found, list) else [found]
    return any(i.get("system") == system and i.get("value") == value for i in items)
