"""FHIR search: what the index holds for a resource, and what a search request asks for.

Pure functions, no I/O: `extract_index` turns a resource into index rows (one per token,
string, date range or reference a search parameter finds), `parse_search` turns query
parameters into a `SearchRequest` the store translates into SQL. Dates are ranges, as in
the FHIR spec: `2024-03` covers the whole month, and prefixes compare ranges.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from ehr_sandbox.outcomes import FhirError
from ehr_sandbox.registry import SPECIAL_PARAMS, SearchParam, params_for

# Bounds standing in for "open" ends of periods; naive UTC like every indexed instant.
MIN_INSTANT = datetime(1, 1, 1)
MAX_INSTANT = datetime(9999, 12, 31, 23, 59, 59, 999999)

REF_PARAM = "_ref"  # every reference anywhere in a resource: the patient compartment
RESULT_PARAMS = frozenset(
    {"_count", "_offset", "_sort", "_include", "_revinclude", "_summary", "_total", "_format"}
)
DatePrefix = Literal["eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap"]
_PREFIXES: frozenset[str] = frozenset({"eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap"})

_DATE_RE = re.compile(
    r"^(?P<y>\d{4})(?:-(?P<m>\d{2})(?:-(?P<d>\d{2})"
    r"(?:T(?P<H>\d{2}):(?P<M>\d{2})(?::(?P<S>\d{2})(?:\.(?P<f>\d+))?)?"
    r"(?P<tz>Z|[+-]\d{2}:\d{2})?)?)?)?$"
)
_ID_RE = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
_REF_RE = re.compile(
    r"(?:^|/)(?P<type>[A-Z][A-Za-z]+)/(?P<id>[A-Za-z0-9\-.]{1,64})(?:/_history/[^/]+)?$"
)


def is_valid_id(value: str) -> bool:
    """Whether `value` is a valid FHIR logical id."""
    return bool(_ID_RE.match(value))


# ---------------------------------------------------------------------------------------
# Dates
# ---------------------------------------------------------------------------------------


def date_range(value: str) -> tuple[datetime, datetime]:
    """The inclusive naive-UTC range a FHIR date, dateTime or instant covers.

    Raises ValueError for anything else. A value without a time zone is taken as UTC.
    """
    match = _DATE_RE.match(value.strip())
    if not match:
        raise ValueError(f"not a FHIR date/dateTime: {value!r}")
    g = match.groupdict()
    year = int(g["y"])
    if g["m"] is None:
        lo = datetime(year, 1, 1)
        hi = datetime(year + 1, 1, 1) if year < 9999 else None
    elif g["d"] is None:
        month = int(g["m"])
        lo = datetime(year, month, 1)
        hi = datetime(year + month // 12, month % 12 + 1, 1) if year < 9999 or month < 12 else None
    elif g["H"] is None:
        lo = datetime(year, int(g["m"]), int(g["d"]))
        hi = lo + timedelta(days=1)
    else:
        second = int(g["S"] or 0)
        fraction = g["f"] or ""
        micro = int((fraction + "000000")[:6]) if fraction else 0
        lo = datetime(year, int(g["m"]), int(g["d"]), int(g["H"]), int(g["M"]), second, micro)
        if g["S"] is None:
            step = timedelta(minutes=1)
        elif not fraction:
            step = timedelta(seconds=1)
        else:
            step = timedelta(microseconds=10 ** max(0, 6 - len(fraction)))
        tz = g["tz"]
        if tz and tz != "Z":
            sign = 1 if tz[0] == "+" else -1
            lo -= sign * timedelta(hours=int(tz[1:3]), minutes=int(tz[4:6]))
        hi = lo + step
    upper = MAX_INSTANT if hi is None else hi - timedelta(microseconds=1)
    return lo, upper


def to_naive_utc(moment: datetime) -> datetime:
    """`moment` as a naive UTC datetime (naive input is taken as UTC already)."""
    if moment.tzinfo is None:
        return moment
    return moment.astimezone(UTC).replace(tzinfo=None)


def format_instant(moment: datetime) -> str:
    """A FHIR instant with microseconds and `Z`, from an aware or naive-UTC datetime."""
    return to_naive_utc(moment).isoformat(timespec="microseconds") + "Z"


# ---------------------------------------------------------------------------------------
# Index extraction
# ---------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------
# Search requests
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TokenValue:
    """`code`, `system|code`, `|code` (no system) or `system|` (any code of the system)."""

    system: str | None
    code: str | None
    system_given: bool


@dataclass(frozen=True)
class StringValue:
    """A string search value, raw and normalised."""

    raw: str
    normalised: str


@dataclass(frozen=True)
class DateValue:
    """A date search value: its prefix and the range it covers."""

    prefix: DatePrefix
    lo: datetime
    hi: datetime


@dataclass(frozen=True)
class ReferenceValue:
    """A reference search value: `Type/id`, a bare id, or an absolute URL/canonical."""

    ref_type: str | None
    ref_id: str | None
    url: str | None


SearchValue = TokenValue | StringValue | DateValue | ReferenceValue


@dataclass(frozen=True)
class Criterion:
    """One search parameter occurrence; its values are OR-ed, criteria are AND-ed."""

    param: SearchParam
    modifier: str | None
    values: tuple[SearchValue, ...]
    missing: bool | None = None


@dataclass(frozen=True)
class SortKey:
    """One `_sort` key."""

    param: SearchParam
    descending: bool


@dataclass(frozen=True)
class Include:
    """An `_include` or `_revinclude`: source type, reference parameter, optional target."""

    source_type: str
    param: SearchParam
    target_type: str | None


@dataclass
class SearchRequest:
    """A parsed search on one resource type."""

    resource_type: str
    criteria: list[Criterion] = field(default_factory=list)
    count: int = 20
    offset: int = 0
    sort: list[SortKey] = field(default_factory=list)
    includes: list[Include] = field(default_factory=list)
    revincludes: list[Include] = field(default_factory=list)
    summary_count: bool = False
    # Parameters the server ignored, for the OperationOutcome entry of the searchset.
    ignored: list[str] = field(default_factory=list)
    # The parameters actually applied (paging excluded), for self/next/previous links.
    applied: list[tuple[str, str]] = field(default_factory=list)


def split_values(raw: str) -> list[str]:
    """Split a search value on unescaped commas and undo `\\,`, `\\|`, `\\$`, `\\\\`."""
    parts: list[str] = []
    current: list[str] = []
    escaped = False
    for char in raw:
        if escaped:
            current.append(char if char in ",|$\\" else "\\" + char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == ",":
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    if escaped:
        current.append("\\")
    parts.append("".join(current))
    return parts


def _split_token(raw: str) -> tuple[str, str | None]:
    # The first unescaped `|` separates system from code.
    index = 0
    while index < len(raw):
        if raw[index] == "\\":
            index += 2
            continue
        if raw[index] == "|":
            return raw[:index], raw[index + 1 :]
        index += 1
    return raw, None


def _parse_token(value: str) -> TokenValue:
    system, code = _split_token(value)
    if code is None:
        return TokenValue(None, system or None, False)
    return TokenValue(system or None, code or None, True)


def _parse_date(name: str, value: str) -> DateValue:
    prefix = "eq"
    body = value
    if len(value) > 2 and value[:2] in _PREFIXES and not value[:2].isdigit():
        prefix, body = value[:2], value[2:]
    try:
        lo, hi = date_range(body)
    except ValueError as exc:
        raise FhirError(400, f"Invalid date value for {name}: {value}", expression=[name]) from exc
    return DateValue(prefix, lo, hi)  # type: ignore[arg-type]


def _parse_reference(
    param: SearchParam, modifier: str | None, value: str, fhir_base: str
) -> ReferenceValue:
    if value.startswith(fhir_base + "/"):
        value = value[len(fhir_base) + 1 :]
    if "://" in value or value.startswith("urn:"):
        parsed = parse_reference(value, fhir_base)
        return ReferenceValue(
            parsed[0] if parsed else None, parsed[1] if parsed else None, value.split("|", 1)[0]
        )
    if "/" in value:
        ref_type, _, ref_id = value.partition("/")
        return ReferenceValue(ref_type, ref_id.split("/_history", 1)[0], None)
    target: str | None = modifier if modifier and modifier[:1].isupper() else None
    if target is None and len(param.targets) == 1:
        target = param.targets[0]
    return ReferenceValue(target, value, None)


def _parse_values(
    param: SearchParam, modifier: str | None, raw: str, fhir_base: str
) -> tuple[SearchValue, ...]:
    values: list[SearchValue] = []
    for part in split_values(raw):
        if part == "":
            continue
        if param.type == "token":
            values.append(_parse_token(part))
        elif param.type in ("string", "uri"):
            values.append(StringValue(part, normalise_text(part)))
        elif param.type == "date":
            values.append(_parse_date(param.name, part))
        else:
            values.append(_parse_reference(param, modifier, part, fhir_base))
    if not values:
        raise FhirError(
            400, f"Empty value for search parameter {param.name}", expression=[param.name]
        )
    return tuple(values)


_MODIFIERS: dict[str, frozenset[str]] = {
    "token": frozenset({"not"}),
    "string": frozenset({"exact", "contains"}),
    "uri": frozenset({"below", "above"}),
    "date": frozenset(),
    "reference": frozenset(),
}


def _modifier_allowed(param: SearchParam, modifier: str) -> bool:
    if modifier == "missing":
        return True
    if param.type == "reference" and modifier[:1].isupper():
        return not param.targets or modifier in param.targets
    return modifier in _MODIFIERS[param.type]


MAX_OFFSET = 1_000_000


def _int_param(name: str, value: str, minimum: int, maximum: int | None = None) -> int:
    try:
        number = int(value)
    except ValueError as exc:
        raise FhirError(400, f"{name} must be an integer", expression=[name]) from exc
    if number < minimum:
        raise FhirError(400, f"{name} must be at least {minimum}", expression=[name])
    if maximum is not None and number > maximum:
        raise FhirError(400, f"{name} must be at most {maximum}", expression=[name])
    return number


def _parse_include(
    request: SearchRequest, name: str, value: str, *, reverse: bool
) -> Include | None:
    parts = value.split(":")
    if len(parts) not in (2, 3):
        return None
    source_type, param_name = parts[0], parts[1]
    target = parts[2] if len(parts) == 3 else None
    if not reverse and source_type != request.resource_type:
        return None
    param = params_for(source_type).get(param_name)
    if param is None or param.type != "reference":
        return None
    if target is not None and param.targets and target not in param.targets:
        return None
    return Include(source_type, param, target)


def parse_search(
    resource_type: str,
    items: Sequence[tuple[str, str]],
    *,
    fhir_base: str,
    default_count: int,
    max_count: int,
    strict: bool,
) -> SearchRequest:
    """Parse query parameters of a search on `resource_type`.

    Unknown or unsupported parameters are ignored and listed in `ignored`, or rejected
    with 400 when `strict` (the client sent `Prefer: handling=strict`).
    """
    request = SearchRequest(resource_type, count=default_count)
    params = params_for(resource_type)

    def reject(key: str, why: str) -> None:
        if strict:
            raise FhirError(
                400,
                f"Unsupported search parameter {key}: {why}",
                code="not-supported",
                expression=[key],
            )
        request.ignored.append(f"{key}: {why}")

    for key, value in items:
        if key == "_count":
            # Numbers beyond what SQL can bind are refused rather than clamped.
            request.count = min(_int_param(key, value, 0, MAX_OFFSET), max_count)
            continue
        if key == "_offset":
            request.offset = _int_param(key, value, 0, MAX_OFFSET)
            continue
        if key == "_format":
            continue
        if key in ("_total",):
            request.applied.append((key, value))
            continue
        if key == "_summary":
            if value == "count":
                request.summary_count = True
                request.applied.append((key, value))
            elif value != "false":
                reject(key, f"only _summary=count is supported, not {value}")
            continue
        if key == "_sort":
            for part in (p for p in value.split(",") if p):
                descending = part.startswith("-")
                sort_param = params.get(part.lstrip("-"))
                if sort_param is None or sort_param.type == "reference":
                    reject(key, f"cannot sort by {part}")
                    continue
                request.sort.append(SortKey(sort_param, descending))
            request.applied.append((key, value))
            continue
        if key in ("_include", "_revinclude"):
            reverse = key == "_revinclude"
            include = _parse_include(request, key, value, reverse=reverse)
            if include is None:
                reject(key, f"unknown reference parameter {value}")
                continue
            (request.revincludes if reverse else request.includes).append(include)
            request.applied.append((key, value))
            continue
        name, _, modifier_part = key.partition(":")
        modifier = modifier_part or None
        param = params.get(name)
        if param is None:
            reject(key, f"unknown search parameter for {resource_type}")
            continue
        if modifier is not None and not _modifier_allowed(param, modifier):
            reject(key, f"modifier :{modifier} is not supported")
            continue
        if modifier == "missing":
            if value not in ("true", "false"):
                raise FhirError(400, f"{key} must be true or false", expression=[key])
            request.criteria.append(Criterion(param, modifier, (), missing=value == "true"))
        else:
            request.criteria.append(
                Criterion(param, modifier, _parse_values(param, modifier, value, fhir_base))
            )
        request.applied.append((key, value))
    return request


def iter_pairs(multi: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """Query pairs with empty keys dropped (a stray `&` in a URL)."""
    return [(k, v) for k, v in multi if k]
