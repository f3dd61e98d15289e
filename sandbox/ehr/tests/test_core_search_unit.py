"""Pure search helpers: FHIR date ranges, value escaping, request parsing, index extraction."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from ehr_sandbox.fhir.outcomes import FhirError
from ehr_sandbox.search import (
    DateValue,
    ReferenceValue,
    SearchRequest,
    TokenValue,
    date_range,
    extract_index,
    normalise_text,
    parse_reference,
    parse_search,
    split_values,
)

BASE = "http://ehr.test/fhir"


def _parse(resource_type: str, *pairs: tuple[str, str], strict: bool = False) -> SearchRequest:
    return parse_search(
        resource_type, list(pairs), fhir_base=BASE, default_count=20, max_count=100, strict=strict
    )


@pytest.mark.parametrize(
    ("value", "lo", "hi"),
    [
        (
            "2024",
            datetime(2024, 1, 1, tzinfo=UTC),
            datetime(2024, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        ),
        (
            "2024-02",
            datetime(2024, 2, 1, tzinfo=UTC),
            datetime(2024, 2, 29, 23, 59, 59, 999999, tzinfo=UTC),
        ),
        (
            "2024-12",
            datetime(2024, 12, 1, tzinfo=UTC),
            datetime(2024, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        ),
        (
            "2024-03-05",
            datetime(2024, 3, 5, tzinfo=UTC),
            datetime(2024, 3, 5, 23, 59, 59, 999999, tzinfo=UTC),
        ),
        (
            "2024-03-05T10:30",
            datetime(2024, 3, 5, 10, 30, tzinfo=UTC),
            datetime(2024, 3, 5, 10, 30, 59, 999999, tzinfo=UTC),
        ),
        (
            "2024-03-05T10:30:15Z",
            datetime(2024, 3, 5, 10, 30, 15, tzinfo=UTC),
            datetime(2024, 3, 5, 10, 30, 15, 999999, tzinfo=UTC),
        ),
        (
            "2024-03-05T10:30:15.5Z",
            datetime(2024, 3, 5, 10, 30, 15, 500000, tzinfo=UTC),
            datetime(2024, 3, 5, 10, 30, 15, 599999, tzinfo=UTC),
        ),
        (
            "2024-03-05T10:30:15.123456+02:00",
            datetime(2024, 3, 5, 8, 30, 15, 123456, tzinfo=UTC),
            datetime(2024, 3, 5, 8, 30, 15, 123456, tzinfo=UTC),
        ),
    ],
)
def test_date_range_follows_precision_and_zone(value: str, lo: datetime, hi: datetime) -> None:
    assert date_range(value) == (lo, hi)


@pytest.mark.parametrize("value", ["", "yesterday", "2024-13", "24-01-01", "2024-01-01T25:00"])
def test_date_range_rejects_non_dates(value: str) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - the message varies with the input
        date_range(value)


def test_split_values_honours_escapes() -> None:
    assert split_values("a,b") == ["a", "b"]
    assert split_values(r"a\,b,c") == ["a,b", "c"]
    assert split_values(r"x\|y") == ["x|y"]
    assert split_values("single") == ["single"]


def test_normalise_text_ignores_case_and_accents() -> None:
    assert normalise_text("  MÜLLER-Lüdenscheidt ") == "muller-ludenscheidt"


def test_parse_reference_forms() -> None:
    assert parse_reference("Patient/1", BASE) == ("Patient", "1")
    assert parse_reference(f"{BASE}/Patient/1", BASE) == ("Patient", "1")
    assert parse_reference("http://other.org/fhir/Patient/9/_history/2", BASE) == ("Patient", "9")
    assert parse_reference("http://example.org/Questionnaire/intake|3", BASE) == (
        "Questionnaire",
        "intake",
    )
    assert parse_reference("#contained", BASE) is None
    assert parse_reference("urn:uuid:123", BASE) is None


def test_parse_search_values() -> None:
    request = _parse(
        "Observation",
        ("patient", "p1"),
        ("code", "http://loinc.org|1,2"),
        ("date", "ge2024-01"),
        ("_count", "500"),
        ("_offset", "40"),
        ("_sort", "-date,_id"),
    )
    patient, code, date = request.criteria
    assert patient.values == (ReferenceValue("Patient", "p1", None),)
    assert code.values == (TokenValue("http://loinc.org", "1", True), TokenValue(None, "2", False))
    assert isinstance(date.values[0], DateValue)
    assert date.values[0].prefix == "ge"
    assert request.count == 100  # capped at the maximum
    assert request.offset == 40
    assert [(k.param.name, k.descending) for k in request.sort] == [("date", True), ("_id", False)]
    assert ("_count", "500") not in request.applied


def test_parse_search_unknowns_are_ignored_or_rejected() -> None:
    lenient = _parse(
        "Patient", ("shoe-size", "42"), ("name:phonetic", "x"), ("_include", "Patient:nope")
    )
    assert len(lenient.ignored) == 3
    assert not lenient.criteria
    with pytest.raises(FhirError) as raised:
        _parse("Patient", ("shoe-size", "42"), strict=True)
    assert raised.value.status == 400


def test_parse_search_rejects_bad_values() -> None:
    for pair in (
        ("_count", "x"),
        ("birthdate", "soon"),
        ("gender:missing", "maybe"),
        ("gender", ""),
    ):
        with pytest.raises(FhirError) as raised:
            _parse("Patient", pair)
        assert raised.value.status == 400, pair


def test_extract_index_covers_names_periods_references_and_canonicals() -> None:
    entries = extract_index(
        "Encounter",
        {
            "resourceType": "Encounter",
            "id": "e1",
            "status": "finished",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
            "subject": {"reference": "Patient/p1"},
            "period": {"start": "2024-01-01T10:00:00Z"},
            "participant": [{"individual": {"reference": "Practitioner/d1"}}],
        },
        BASE,
    )
    by_param = {(e.param, e.code, e.ref_type, e.ref_id) for e in entries}
    assert ("patient", "Patient/p1", "Patient", "p1") in by_param
    assert ("practitioner", "Practitioner/d1", "Practitioner", "d1") in by_param
    assert ("class", "AMB", None, None) in by_param
    assert ("_ref", None, "Patient", "p1") in by_param
    period = next(e for e in entries if e.param == "date")
    assert period.date_lo == datetime(2024, 1, 1, 10, tzinfo=UTC)
    assert period.date_hi == datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)  # open-ended
    qr = extract_index(
        "QuestionnaireResponse",
        {
            "resourceType": "QuestionnaireResponse",
            "id": "q",
            "status": "completed",
            "questionnaire": "http://example.org/Questionnaire/intake|2",
        },
        BASE,
    )
    questionnaire = next(e for e in qr if e.param == "questionnaire")
    assert (questionnaire.code, questionnaire.ref_type, questionnaire.ref_id) == (
        "http://example.org/Questionnaire/intake",
        "Questionnaire",
        "intake",
    )
