"""Translation of a parsed `SearchRequest` into SQL over `resource_heads` and `search_index`.

Each criterion becomes an EXISTS on the index (its values OR-ed), criteria are AND-ed;
`_id` and `_lastUpdated` are answered from the head row itself. Date comparisons follow the
FHIR range semantics (see `search.date_range`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    FromClause,
    Select,
    and_,
    false,
    func,
    literal,
    not_,
    or_,
    select,
    true,
)
from sqlalchemy.sql.base import ReadOnlyColumnCollection
from sqlalchemy.sql.elements import UnaryExpression

from ehr_sandbox.search import (
    Criterion,
    DateValue,
    ReferenceValue,
    SearchRequest,
    SortKey,
    StringValue,
    TokenValue,
)
from ehr_sandbox.store.tables import resource_heads as heads
from ehr_sandbox.store.tables import search_index

_LIKE_ESCAPE = "\\"


def _like_prefix(value: str) -> str:
    escaped = value.replace(_LIKE_ESCAPE, _LIKE_ESCAPE * 2).replace("%", "\\%").replace("_", "\\_")
    return escaped


def date_condition(
    lo: ColumnElement[datetime], hi: ColumnElement[datetime], value: DateValue
) -> ColumnElement[bool]:
    """Whether a target range [lo, hi] matches `value` under its prefix."""
    contained = and_(lo >= value.lo, hi <= value.hi)
    match value.prefix:
        case "eq":
            return contained
        case "ne":
            return not_(contained)
        case "gt":
            return hi > value.hi
        case "lt":
            return lo < value.lo
        case "ge":
            return or_(hi > value.hi, contained)
        case "le":
            return or_(lo < value.lo, contained)
        case "sa":
            return lo > value.hi
        case "eb":
            return hi < value.lo
        case _:  # "ap": approximately, read as overlapping
            return and_(lo <= value.hi, hi >= value.lo)


def _value_condition(criterion: Criterion, si: FromClause) -> ColumnElement[bool]:
    c = si.c
    clauses: list[ColumnElement[bool]] = []
    for value in criterion.values:
        if isinstance(value, TokenValue):
            parts: list[ColumnElement[bool]] = []
            if value.code is not None:
                parts.append(c.code == value.code)
            if value.system_given:
                parts.append(
                    c.system.is_(None) if value.system is None else c.system == value.system
                )
            clauses.append(and_(true(), *parts))
        elif isinstance(value, StringValue):
            if criterion.param.type == "uri":
                if criterion.modifier == "below":
                    clauses.append(c.code.like(_like_prefix(value.raw) + "%", escape=_LIKE_ESCAPE))
                elif criterion.modifier == "above":
                    clauses.append(literal(value.raw).like(c.code + "%"))
                else:
                    clauses.append(c.code == value.raw)
            elif criterion.modifier == "exact":
                clauses.append(c.code == value.raw)
            elif criterion.modifier == "contains":
                pattern = "%" + _like_prefix(value.normalised) + "%"
                clauses.append(c.text.like(pattern, escape=_LIKE_ESCAPE))
            else:
                pattern = _like_prefix(value.normalised) + "%"
                clauses.append(c.text.like(pattern, escape=_LIKE_ESCAPE))
        elif isinstance(value, DateValue):
            clauses.append(date_condition(c.date_lo, c.date_hi, value))
        elif isinstance(value, ReferenceValue):
            clauses.append(_reference_condition(criterion, value, c))
    return or_(false(), *clauses)


def _reference_condition(
    criterion: Criterion, value: ReferenceValue, c: ReadOnlyColumnCollection[str, Any]
) -> ColumnElement[bool]:
    by_ref: ColumnElement[bool] | None = None
    if value.ref_id is not None:
        by_ref = c.ref_id == value.ref_id
        if value.ref_type is not None:
            by_ref = and_(by_ref, c.ref_type == value.ref_type)
    modifier = criterion.modifier
    if modifier and modifier[:1].isupper():
        type_clause = c.ref_type == modifier
        by_ref = type_clause if by_ref is None else and_(by_ref, type_clause)
    if value.url is not None:
        by_url: ColumnElement[bool] = c.code == value.url
        return by_url if by_ref is None else or_(by_url, by_ref)
    return by_ref if by_ref is not None else false()


def criterion_condition(
    criterion: Criterion, position: int, resource_type: str
) -> ColumnElement[bool]:
    """The WHERE clause (over `resource_heads`) for one criterion."""
    name = criterion.param.name
    if name == "_id":
        codes = [v.code for v in criterion.values if isinstance(v, TokenValue) and v.code]
        if criterion.missing is not None:
            return false() if criterion.missing else true()
        clause = heads.c.res_id.in_(codes)
        return not_(clause) if criterion.modifier == "not" else clause
    if name == "_lastUpdated":
        if criterion.missing is not None:
            return false() if criterion.missing else true()
        return or_(
            false(),
            *(
                date_condition(heads.c.last_updated, heads.c.last_updated, v)
                for v in criterion.values
                if isinstance(v, DateValue)
            ),
        )
    # An uncorrelated IN (subquery) is evaluated once per search, where a correlated EXISTS
    # would probe the index once per candidate row.
    si = search_index.alias(f"si{position}")
    scope = [si.c.res_type == resource_type, si.c.param == name]
    if criterion.missing is not None:
        present = heads.c.res_id.in_(select(si.c.res_id).where(*scope))
        return not_(present) if criterion.missing else present
    matching = heads.c.res_id.in_(
        select(si.c.res_id).where(*scope, _value_condition(criterion, si))
    )
    return not_(matching) if criterion.modifier == "not" else matching


def search_conditions(request: SearchRequest) -> list[ColumnElement[bool]]:
    """Every WHERE clause of `request`, including the type and not-deleted filters."""
    conditions: list[ColumnElement[bool]] = [
        heads.c.res_type == request.resource_type,
        heads.c.deleted.is_(False),
    ]
    conditions.extend(
        criterion_condition(criterion, n, request.resource_type)
        for n, criterion in enumerate(request.criteria)
    )
    return conditions


def _sort_expression(key: SortKey, position: int) -> list[UnaryExpression[object]]:
    name = key.param.name
    if name == "_lastUpdated":
        column: ColumnElement[object] = heads.c.last_updated
    elif name == "_id":
        column = heads.c.res_id
    else:
        si = search_index.alias(f"sort{position}")
        if key.param.type == "date":
            value_column = si.c.date_hi if key.descending else si.c.date_lo
        elif key.param.type == "string":
            value_column = si.c.text
        else:
            value_column = si.c.code
        aggregate = func.max(value_column) if key.descending else func.min(value_column)
        column = (
            select(aggregate)
            .where(
                si.c.res_type == heads.c.res_type,
                si.c.res_id == heads.c.res_id,
                si.c.param == name,
            )
            .scalar_subquery()
        )
    ordered = column.desc() if key.descending else column.asc()
    return [ordered.nulls_last()]


def order_by(request: SearchRequest) -> list[UnaryExpression[object]]:
    """ORDER BY of `request`: its `_sort` keys, then a total order for stable paging."""
    ordering: list[UnaryExpression[object]] = []
    for n, key in enumerate(request.sort):
        ordering.extend(_sort_expression(key, n))
    if not request.sort:
        ordering.append(heads.c.last_updated.asc())
    ordering.append(heads.c.res_id.asc())
    return ordering


def matching_heads(request: SearchRequest) -> Select[tuple[str, str]]:
    """SELECT (res_type, res_id) of the current versions matching `request`, ordered."""
    return (
        select(heads.c.res_type, heads.c.res_id)
        .where(*search_conditions(request))
        .order_by(*order_by(request))
    )
