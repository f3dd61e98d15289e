"""FHIR search: what the index holds for a resource, and what a search request asks for.

Pure functions, no I/O: `extract_index` (`index`) turns a resource into index rows (one
per token, string, date range or reference a search parameter finds); `parse_search`
(`query`) turns query parameters into a `SearchRequest` the store translates into SQL;
`dates` gives FHIR dates their range semantics (`2024-03` covers the whole month).
"""

from ehr_sandbox.search.dates import (
    MAX_INSTANT,
    MIN_INSTANT,
    date_range,
    format_instant,
    to_utc,
)
from ehr_sandbox.search.index import (
    REF_PARAM,
    IndexEntry,
    extract_index,
    is_valid_id,
    normalise_text,
    parse_reference,
    values_at,
)
from ehr_sandbox.search.query import (
    MAX_OFFSET,
    Criterion,
    DatePrefix,
    DateValue,
    Include,
    ReferenceValue,
    SearchRequest,
    SearchValue,
    SortKey,
    StringValue,
    TokenValue,
    int_param,
    iter_pairs,
    parse_search,
    split_values,
)

__all__ = [
    "MAX_INSTANT",
    "MAX_OFFSET",
    "MIN_INSTANT",
    "REF_PARAM",
    "Criterion",
    "DatePrefix",
    "DateValue",
    "Include",
    "IndexEntry",
    "ReferenceValue",
    "SearchRequest",
    "SearchValue",
    "SortKey",
    "StringValue",
    "TokenValue",
    "date_range",
    "extract_index",
    "format_instant",
    "int_param",
    "is_valid_id",
    "iter_pairs",
    "normalise_text",
    "parse_reference",
    "parse_search",
    "split_values",
    "to_utc",
    "values_at",
]
