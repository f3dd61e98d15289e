"""Reading values out of FHIR R4 JSON (plain dicts): references, instants, codings, meta.

The inbound side handles FHIR as dicts rather than `fhir.resources` models: notifications
are on the hot path (parsing a model costs milliseconds per resource) and a vendor's
resources are often not strictly valid, while we need only a handful of elements. These
helpers are total: they return None for anything missing or malformed and never raise.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from contracts.base import Coding

Resource = dict[str, Any]

# `Type/id`, optionally versioned, at the end of a relative or absolute reference.
_REFERENCE = re.compile(
    r"(?:^|/)(?P<type>[A-Z][A-Za-z]+)/(?P<id>[A-Za-z0-9\-.]{1,64})(?:/_history/(?P<version>[A-Za-z0-9\-.]{1,64}))?/?$"
)
_ETAG = re.compile(r'^(?:W/)?"(?P<version>[^"]+)"$')
_YEAR = re.compile(r"^\d{4}$")
_YEAR_MONTH = re.compile(r"^\d{4}-\d{2}$")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
FHIR_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")


@dataclass(frozen=True, order=True)
class Ref:
    """A reference to one resource: `Type/id` (and the version, when the reference had one)."""

    type: str
    id: str
    version: str | None = None

    @property
    def key(self) -> str:
        """`Type/id`, without the version."""
        return f"{self.type}/{self.id}"

    def __str__(self) -> str:
        return self.key


def parse_reference(value: Any) -> Ref | None:
    """The `Type/id` of a relative, absolute or versioned reference string (else None)."""
    if not isinstance(value, str):
        return None
    match = _REFERENCE.search(value.strip())
    if match is None:
        return None
    return Ref(match.group("type"), match.group("id"), match.group("version"))


def reference_of(element: Any) -> Ref | None:
    """The reference of a FHIR `Reference` element (`{"reference": ...}`), else None."""
    if not isinstance(element, dict):
        return None
    return parse_reference(element.get("reference"))


def references(elements: Any, resource_type: str | None = None) -> list[Ref]:
    """References of a list (or single) of `Reference` elements, optionally of one type."""
    found: list[Ref] = []
    for element in as_list(elements):
        ref = reference_of(element)
        if (
            ref is not None
            and (resource_type is None or ref.type == resource_type)
            and (ref not in found)
        ):
            found.append(ref)
    return found


def as_list(value: Any) -> list[Any]:
    """A FHIR element that may be repeated, as a list."""
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def etag_version(etag: Any) -> str | None:
    """The version in an ETag (`W/"3"` → `3`)."""
    if not isinstance(etag, str):
        return None
    match = _ETAG.match(etag.strip())
    return match.group("version") if match else None


def parse_instant(value: Any) -> datetime | None:
    """A FHIR instant, dateTime or date as an aware datetime (None if absent or invalid).

    A partial date stands for its first moment (`2024-03` → 1 March 00:00 UTC) and a time
    without an offset is taken as UTC: payload times must carry a time zone, and the
    start of a period is how a partial date sorts.
    """
    if not isinstance(value, str) or not value:
        return None
    text = value.strip()
    try:
        if _YEAR.match(text):
            return datetime(int(text), 1, 1, tzinfo=UTC)
        if _YEAR_MONTH.match(text):
            return datetime(int(text[:4]), int(text[5:7]), 1, tzinfo=UTC)
        if _DATE.match(text):
            return datetime.fromisoformat(text).replace(tzinfo=UTC)
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def meta_version(resource: Resource) -> tuple[str | None, datetime | None]:
    """`meta.versionId` and `meta.lastUpdated` of a resource."""
    meta = resource.get("meta")
    if not isinstance(meta, dict):
        return None, None
    version = meta.get("versionId")
    return (str(version) if version not in (None, "") else None), parse_instant(
        meta.get("lastUpdated")
    )


def has_tag(resource: Resource, system: str, code: str) -> bool:
    """Whether `meta.tag` carries the coding `system|code`."""
    meta = resource.get("meta")
    if not isinstance(meta, dict):
        return False
    return any(
        isinstance(tag, dict) and tag.get("system") == system and tag.get("code") == code
        for tag in as_list(meta.get("tag"))
    )


def codings(concept: Any) -> list[Coding]:
    """The well-formed codings (system and code present) of a CodeableConcept."""
    if not isinstance(concept, dict):
        return []
    found: list[Coding] = []
    for coding in as_list(concept.get("coding")):
        if not isinstance(coding, dict):
            continue
        system, code = coding.get("system"), coding.get("code")
        if isinstance(system, str) and system and isinstance(code, str) and code:
            display = coding.get("display")
            found.append(
                Coding(
                    system=system,
                    code=code,
                    display=display if isinstance(display, str) else None,
                )
            )
    return found


def best_coding(concept: Any, preferred_systems: Sequence[str] = ()) -> Coding | None:
    """The coding of a preferred system (in order), else the first well-formed one.

    When the chosen coding has no display, the concept's `text` stands in for it.
    """
    found = codings(concept)
    if not found:
        return None
    chosen = found[0]
    for system in preferred_systems:
        match = next((c for c in found if c.system == system), None)
        if match is not None:
            chosen = match
            break
    if chosen.display is None and isinstance(concept, dict):
        text = concept.get("text")
        if isinstance(text, str) and text:
            chosen = chosen.model_copy(update={"display": text})
    return chosen


def concept_text(concept: Any) -> str | None:
    """A human label of a CodeableConcept: its text, else its first coding's display."""
    if not isinstance(concept, dict):
        return None
    text = concept.get("text")
    if isinstance(text, str) and text:
        return text
    for coding in codings(concept):
        if coding.display:
            return coding.display
    return None


def string(value: Any) -> str | None:
    """A non-empty string, else None."""
    return value if isinstance(value, str) and value else None


def contained(resource: Resource, local_ref: Any) -> Resource | None:
    """The contained resource a local reference (`#id`) names."""
    if not isinstance(local_ref, dict):
        return None
    reference = local_ref.get("reference")
    if not isinstance(reference, str) or not reference.startswith("#"):
        return None
    wanted = reference[1:]
    for candidate in as_list(resource.get("contained")):
        if isinstance(candidate, dict) and candidate.get("id") == wanted:
            return candidate
    return None


def human_name(resource: Resource | None) -> str | None:
    """A display name of a Practitioner/Organization/... (`name` as string or HumanName)."""
    if resource is None:
        return None
    name = resource.get("name")
    if isinstance(name, str) and name:
        return name
    for item in as_list(name):
        if not isinstance(item, dict):
            continue
        if isinstance(item.get("text"), str) and item["text"]:
            return str(item["text"])
        parts = [p for p in as_list(item.get("prefix")) if isinstance(p, str)]
        parts += [p for p in as_list(item.get("given")) if isinstance(p, str)]
        if isinstance(item.get("family"), str):
            parts.append(item["family"])
        if parts:
            return " ".join(parts)
    return None


def unique(items: Iterable[str]) -> list[str]:
    """Items without repeats, first occurrence kept."""
    seen: dict[str, None] = {}
    for item in items:
        seen.setdefault(item, None)
    return list(seen)
