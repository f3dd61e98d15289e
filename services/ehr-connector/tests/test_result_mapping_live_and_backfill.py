"""One mapping for results: a back-filled result carries exactly what a live one carries.

Checked on the official FHIR R4 examples: every DiagnosticReport that maps to `lab.resulted`
is mapped again as back-fill, and each of its results must come out with the same facts
(value, unit, ranges, interpretation, status, times, performer) in `record.imported`.
"""

from __future__ import annotations

import base64
from typing import Any

import pytest

from contracts.lab import LabResultedV1
from contracts.record import ImportedEntry, RecordKind
from ehr_connector.inbound.domain.mapping import MAPPERS, MappingContext
from ehr_connector.inbound.domain.mapping.history import map_history

from .test_inbound_mapping_examples import ALL, META, RELATED

REPORTS = [(n, r) for n, r in ALL if r.get("resourceType") == "DiagnosticReport"]


def _stored(resource: dict[str, Any]) -> dict[str, Any]:
    return {**resource, "meta": {**resource.get("meta", {}), **META}}


RELATED_STORED = {key: _stored(r) for key, r in RELATED.items()}


def _live(report: dict[str, Any]) -> LabResultedV1 | None:
    result = MAPPERS["DiagnosticReport"].map(
        _stored(report), MappingContext(patient_id="pat-test", related=RELATED_STORED)
    )
    return result if isinstance(result, LabResultedV1) else None


LIVE = [(n, live) for n, r in REPORTS if (live := _live(r)) is not None]


def test_several_example_reports_map_live() -> None:
    assert len(LIVE) >= 5, [n for n, _ in LIVE]


@pytest.mark.parametrize(("name", "live"), LIVE, ids=[n for n, _ in LIVE])
def test_back_filled_results_carry_the_same_facts_as_live_ones(
    name: str, live: LabResultedV1
) -> None:
    report_entry = map_history(RELATED_STORED[f"DiagnosticReport/{live.report_fhir_id}"])
    assert isinstance(report_entry, ImportedEntry), name
    assert report_entry.code == live.code
    assert report_entry.category == live.category
    assert report_entry.issued == live.issued
    assert set(report_entry.performer) <= set(live.performer)
    for line in live.observations:
        key = f"Observation/{line.observation_fhir_id}"
        if key not in RELATED_STORED:
            continue  # a contained result: it travels inside its report's entry only
        entry = map_history(RELATED_STORED[key])
        if not isinstance(entry, ImportedEntry):
            continue  # categorised as neither laboratory nor vital signs (e.g. imaging)
        assert entry.observation is not None, key
        # Performers the live path resolved by reading a referenced resource are the only
        # difference: a back-fill page holds no such related resources.
        back = entry.observation.model_dump(exclude={"performer"})
        assert back == line.model_dump(exclude={"performer"}), key
        assert set(entry.observation.performer) <= set(line.performer)


def test_a_high_glucose_keeps_value_unit_range_flag_and_times_when_back_filled() -> None:
    entry = map_history(RELATED_STORED["Observation/f001"])
    assert isinstance(entry, ImportedEntry)
    result = entry.observation
    assert result is not None
    assert result.value_quantity is not None
    assert (result.value_quantity.value, result.value_quantity.unit) == (6.3, "mmol/l")
    assert result.reference_ranges[0].low is not None
    assert result.reference_ranges[0].low.value == 3.1
    assert [i.code for i in result.interpretation] == ["H"]
    assert result.effective is not None and result.effective.utcoffset() is not None
    assert result.issued is not None and result.issued.isoformat() == "2013-04-03T15:30:10+01:00"
    assert result.performer == ["A. Langeveld"]
    assert (result.status, result.version_id) == ("final", "1")


def test_uncategorised_results_of_a_report_are_imported_with_their_values() -> None:
    entry = map_history(RELATED_STORED["Observation/cholesterol"])
    assert isinstance(entry, ImportedEntry)
    assert entry.kind is RecordKind.LAB_RESULT
    assert entry.observation is not None and entry.observation.reference_ranges
    report = map_history(RELATED_STORED["DiagnosticReport/lipids"])
    assert isinstance(report, ImportedEntry)
    assert "cholesterol" in report.related_fhir_ids
    assert report.performer == ["Acme Laboratory, Inc"]


def test_a_vital_sign_is_imported_with_its_full_result() -> None:
    entry = map_history(RELATED_STORED["Observation/heart-rate"])
    assert isinstance(entry, ImportedEntry)
    assert entry.kind is RecordKind.VITAL_SIGN
    assert entry.observation is not None and entry.observation.value_quantity is not None
    assert entry.observation.value_quantity.unit == "beats/minute"


def test_a_document_keeps_its_inline_attachment_and_content_type() -> None:
    text = b"After-visit summary."
    document = _stored(
        {
            "resourceType": "DocumentReference",
            "id": "doc-1",
            "status": "current",
            "type": {"coding": [{"system": "http://loinc.org", "code": "34133-9"}]},
            "date": "2026-11-20T10:00:00+01:00",
            "content": [
                {
                    "attachment": {
                        "contentType": "text/plain",
                        "title": "Summary",
                        "data": base64.b64encode(text).decode(),
                    }
                },
                {"attachment": {"contentType": "application/pdf", "url": "Binary/b-1"}},
            ],
        }
    )
    entry = map_history(document)
    assert isinstance(entry, ImportedEntry)
    inline, by_url = entry.attachments
    assert inline.content_type == "text/plain" and inline.data is not None
    assert base64.b64decode(inline.data) == text
    assert by_url.content_type == "application/pdf" and by_url.data is None
