"""What the search index holds for a resource: one row per searchable value.

`extract_index` walks a resource along the paths of its type's search parameters
(`registry`) and yields tokens (system|code), normalised strings, date ranges and
references, plus a `_ref` row for every reference anywhere in it (the patient compartment
behind `$everything`).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ehr_sandbox.fhir.resource_types import SPECIAL_PARAMS, SearchParam, params_for
from ehr_sandbox.search.dates import MAX_INSTANT, MIN_INSTANT, date_range

REF_PARAM = "_ref"  # every reference anywhere in a resource: the patient compartment

_ID_RE = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
_REF_RE = re.compile(
    r"(?:^|/)(?P<type>[A-Z][A-Za-z]+)/(?P<id>[A-Za-z0-9\-.]{1,64})(?:/_history/[^/]+)?$"
)


def is_valid_id(value: str) -> bool:
    """Whether `value` is a valid FHIR logical id."""
    return bool(_ID_RE.match(value))


@dataclass(frozen=True, slots=True)
class IndexEntry:
    """One searchable value of one resource for one parameter."""

    param: str
    system: str | None = None
    code: str | None = None
    text: str | None = None
    date_lo: datetime | None = None
    date_hi: datetime | None = None
    ref_type: str | None = None
    ref_id: str | None = None


def normalise_text(value: str) -> str:
    """Lower-case, accent-free form of `value` for FHIR's default string matching."""
    decomposed = unicodedata.normalize("NFKD", value)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold().strip()


def values_at(node: Any, path: str) -> Iterator[Any]:
    """Every value at dotted `path` in `node`, fanning out over arrays at each step."""
    current: list[Any] = [node]
    for segment in path.split("."):
        following: list[Any] = []
        for item in current:
            if isinstance(item, dict) and segment in item:
                value = item[segment]
                following.extend(value if isinstance(value, list) else [value])
        current = following
    yield from current


def parse_reference(reference: str, fhir_base: str) -> tuple[str, str] | None:
    """`(type, id)` of a literal reference (relative, absolute or versioned), if it has one."""
    if reference.startswith("#"):
        return None
    local = reference
    if local.startswith(fhir_base + "/"):
        local = local[len(fhir_base) + 1 :]
    local = local.split("|", 1)[0]
    match = _REF_RE.search(local)
    if not match:
        return None
    return match.group("type"), match.group("id")


def _token_entries(name: str, value: Any) -> Iterator[IndexEntry]:
    if isinstance(value, bool):
        yield IndexEntry(name, code="true" if value else "false")
    elif isinstance(value, str):
        yield IndexEntry(name, code=value)
    elif isinstance(value, dict):
        if "coding" in value or ("text" in value and "code" not in value and "value" not in value):
            for coding in value.get("coding", []):
                if isinstance(coding, dict) and (coding.get("code") or coding.get("system")):
                    yield IndexEntry(name, system=coding.get("system"), code=coding.get("code"))
        elif "code" in value:
            yield IndexEntry(name, system=value.get("system"), code=value.get("code"))
        elif "value" in value:
            # Identifier and ContactPoint: system|value.
            yield IndexEntry(name, system=value.get("system"), code=str(value["value"]))


def _string_values(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        # HumanName and Address: every textual part is searchable.
        for key in (
            "text",
            "family",
            "given",
            "prefix",
            "suffix",
            "line",
            "city",
            "district",
            "state",
            "postalCode",
            "country",
        ):
            part = value.get(key)
            for item in part if isinstance(part, list) else [part]:
                if isinstance(item, str):
                    yield item


def _date_entries(name: str, value: Any) -> Iterator[IndexEntry]:
    try:
        if isinstance(value, str):
            lo, hi = date_range(value)
            yield IndexEntry(name, date_lo=lo, date_hi=hi)
        elif isinstance(value, dict) and ("start" in value or "end" in value):
            lo = date_range(value["start"])[0] if value.get("start") else MIN_INSTANT
            hi = date_range(value["end"])[1] if value.get("end") else MAX_INSTANT
            yield IndexEntry(name, date_lo=lo, date_hi=hi)
        elif isinstance(value, dict) and "event" in value:
            for event in value["event"]:
                lo, hi = date_range(event)
                yield IndexEntry(name, date_lo=lo, date_hi=hi)
    except (ValueError, TypeError, KeyError):
        # Validation already passed; a value outside our date grammar is simply unsearchable.
        return


def _reference_entries(param: SearchParam, value: Any, fhir_base: str) -> Iterator[IndexEntry]:
    if isinstance(value, dict):
        reference = value.get("reference")
    elif isinstance(value, str):
        reference = value  # canonical
    else:
        return
    if not isinstance(reference, str):
        return
    parsed = parse_reference(reference, fhir_base)
    if param.targets and (parsed is None or parsed[0] not in param.targets):
        return
    yield IndexEntry(
        param.name,
        code=reference.split("|", 1)[0],
        ref_type=parsed[0] if parsed else None,
        ref_id=parsed[1] if parsed else None,
    )


def _param_entries(
    param: SearchParam, resource: dict[str, Any], fhir_base: str
) -> Iterator[IndexEntry]:
    for path in param.paths:
        for value in values_at(resource, path):
            if param.type == "token":
                yield from _token_entries(param.name, value)
            elif param.type == "string":
                for text in _string_values(value):
                    yield IndexEntry(param.name, code=text[:512], text=normalise_text(text)[:512])
            elif param.type == "uri":
                if isinstance(value, str):
                    yield IndexEntry(param.name, code=value)
            elif param.type == "date":
                yield from _date_entries(param.name, value)
            else:
                yield from _reference_entries(param, value, fhir_base)


def _all_references(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "reference" and isinstance(value, str):
                yield value
            elif key != "contained":
                yield from _all_references(value)
    elif isinstance(node, list):
        for item in node:
            yield from _all_references(item)


def extract_index(resource_type: str, resource: dict[str, Any], fhir_base: str) -> list[IndexEntry]:
    """Every index row of `resource`: its search parameter values plus all its references."""
    entries: set[IndexEntry] = set()
    for param in params_for(resource_type).values():
        if param.name not in SPECIAL_PARAMS:
            entries.update(_param_entries(param, resource, fhir_base))
    for reference in _all_references(resource):
        parsed = parse_reference(reference, fhir_base)
        if parsed and parsed != (resource_type, resource.get("id")):
            entries.add(IndexEntry(REF_PARAM, ref_type=parsed[0], ref_id=parsed[1]))
    return sorted(entries, key=repr)
