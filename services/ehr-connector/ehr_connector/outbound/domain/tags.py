"""The origin tag on every resource version the connector writes.

The inbound side uses it to recognise notifications about versions we wrote ourselves
(echoes) and not turn them back into events. Caveat for that check: FHIR servers (and
clinicians' tools that copy a resource before changing it) may carry `meta.tag` forward to
later versions written by someone else, so a tag alone does not prove a version is ours;
`ehr_connector.store.is_own_write` answers for an exact version.
"""

from __future__ import annotations

import copy
from typing import Any, Final

ORIGIN_TAG_SYSTEM: Final = "http://portal.example.org/fhir/CodeSystem/origin"
ORIGIN_TAG_CODE: Final = "patient-portal"
ORIGIN_TAG: Final[dict[str, str]] = {
    "system": ORIGIN_TAG_SYSTEM,
    "code": ORIGIN_TAG_CODE,
    "display": "Written by the patient portal",
}


def has_origin_tag(resource: dict[str, Any]) -> bool:
    """Whether a resource carries the portal's origin tag."""
    return any(
        tag.get("system") == ORIGIN_TAG_SYSTEM and tag.get("code") == ORIGIN_TAG_CODE
        for tag in resource.get("meta", {}).get("tag", [])
    )


def tagged(resource: dict[str, Any]) -> dict[str, Any]:
    """A copy of `resource` with the origin tag added to its `meta.tag` (kept once)."""
    result = copy.deepcopy(resource)
    meta = result.setdefault("meta", {})
    tags = [t for t in meta.get("tag", []) if t.get("system") != ORIGIN_TAG_SYSTEM]
    meta["tag"] = [*tags, dict(ORIGIN_TAG)]
    return result
