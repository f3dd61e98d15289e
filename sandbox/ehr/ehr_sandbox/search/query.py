"""Parsing of search query parameters into a `SearchRequest` the store turns into SQL.

Values are split on unescaped commas (OR); a repeated parameter is another criterion
(AND). Unknown parameters and modifiers are collected in `SearchRequest.ignored`, or
rejected with 400 in strict mode (`Prefer: handling=strict`, and always for conditions).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal, get_args

from ehr_sandbox.fhir.outcomes import FhirError
from ehr_sandbox.fhir.resource_types import SearchParam, params_for
from ehr_sandbox.search.dates import date_range
from ehr_sandbox.search.index import normalise_text, parse_reference

Params = dict[str, SearchParam]
# Refuses a parameter (400 under `Prefer: handling=strict`, else listed as ignored).
Reject = Callable[[str, str], None]

DatePrefix = Literal["eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap"]
# The same prefixes by name, typed: a prefix read from a query is looked up here.
_PREFIXES: dict[str, DatePrefix] = {p: p for p in get_args(DatePrefix)}


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
    prefix: DatePrefix = "eq"
    body = value
    if len(value) > 2 and value[:2] in _PREFIXES and not value[:2].isdigit():
        prefix, body = _PREFIXES[value[:2]], value[2:]
    try:
        lo, hi = date_range(body)
    except ValueError as exc:
        raise FhirError(400, f"Invalid date value for {name}: {value}", expression=[name]) from exc
    return DateValue(prefix, lo, hi)


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


def int_param(name: str, value: str, minimum: int, maximum: int | None = None) -> int:
    """`value` of parameter `name` as an integer in [minimum, maximum], else 400."""
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
            request.count = min(int_param(key, value, 0, MAX_OFFSET), max_count)
        elif key in _CONTROLS:
            _CONTROLS[key](request, key, value, params, reject)
        else:
            _add_criterion(request, key, value, params, reject, fhir_base)
    return request


def _offset(request: SearchRequest, key: str, value: str, params: Params, reject: Reject) -> None:
    request.offset = int_param(key, value, 0, MAX_OFFSET)


def _ignored_quietly(
    request: SearchRequest, key: str, value: str, params: Params, reject: Reject
) -> None:
    pass  # `_format`: the answer is JSON whatever is asked


def _total(request: SearchRequest, key: str, value: str, params: Params, reject: Reject) -> None:
    request.applied.append((key, value))


def _summary(request: SearchRequest, key: str, value: str, params: Params, reject: Reject) -> None:
    if value == "count":
        request.summary_count = True
        request.applied.append((key, value))
    elif value != "false":
        reject(key, f"only _summary=count is supported, not {value}")


def _sort(request: SearchRequest, key: str, value: str, params: Params, reject: Reject) -> None:
    for part in (p for p in value.split(",") if p):
        descending = part.startswith("-")
        sort_param = params.get(part.lstrip("-"))
        if sort_param is None or sort_param.type == "reference":
            reject(key, f"cannot sort by {part}")
            continue
        request.sort.append(SortKey(sort_param, descending))
    request.applied.append((key, value))


def _include(request: SearchRequest, key: str, value: str, params: Params, reject: Reject) -> None:
    reverse = key == "_revinclude"
    include = _parse_include(request, key, value, reverse=reverse)
    if include is None:
        reject(key, f"unknown reference parameter {value}")
        return
    (request.revincludes if reverse else request.includes).append(include)
    request.applied.append((key, value))


# Result parameters (what to return and how), apart from `_count` (it needs the maximum).
_CONTROLS: dict[str, Callable[[SearchRequest, str, str, Params, Reject], None]] = {
    "_offset": _offset,
    "_format": _ignored_quietly,
    "_total": _total,
    "_summary": _summary,
    "_sort": _sort,
    "_include": _include,
    "_revinclude": _include,
}


def _add_criterion(
    request: SearchRequest,
    key: str,
    value: str,
    params: Params,
    reject: Reject,
    fhir_base: str,
) -> None:
    """A search parameter of the type (with its modifier), as a criterion of the search."""
    name, _, modifier_part = key.partition(":")
    modifier = modifier_part or None
    param = params.get(name)
    if param is None:
        reject(key, f"unknown search parameter for {request.resource_type}")
        return
    if modifier is not None and not _modifier_allowed(param, modifier):
        reject(key, f"modifier :{modifier} is not supported")
        return
    if modifier == "missing":
        if value not in ("true", "false"):
            raise FhirError(400, f"{key} must be true or false", expression=[key])
        request.criteria.append(Criterion(param, modifier, (), missing=value == "true"))
    else:
        request.criteria.append(
            Criterion(param, modifier, _parse_values(param, modifier, value, fhir_base))
        )
    request.applied.append((key, value))


def iter_pairs(multi: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """Query pairs with empty keys dropped (a stray `&` in a URL)."""
    return [(k, v) for k, v in multi if k]
