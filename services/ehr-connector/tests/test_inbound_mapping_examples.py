"""Every official FHIR R4 example of a mapped type is mapped or rejected with a reason.

The examples in `shared/fhir-examples` (and the resources inside its example Bundles) are
what real servers send in every odd shape: contained medications, text-only codes, panels
of components, non-patient recipients. None of them may raise; a rejection must say why.
Examples carry no `meta`: each gets the `versionId`/`lastUpdated` any server adds.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from contracts.appointment import AppointmentUpdatedV1, SlotStatus, SlotUpdatedV1
from contracts.base import Payload
from contracts.lab import LabObservation, LabResultedV1
from contracts.medication import MedicationChangedV1
from contracts.record import ImportedEntry
from ehr_connector.inbound.domain.mapping import MAPPERS, MappingContext, Rejected, Skipped
from ehr_connector.inbound.domain.mapping.history import map_history
from ehr_connector.inbound.domain.mapping.lab import map_observation


def _examples_dir() -> Path:
    """`shared/fhir-examples` beside the repository (or beside a folder of worktrees)."""
    for parent in Path(__file__).resolve().parents[4:]:
        if (parent / "shared" / "fhir-examples").is_dir():
            return parent / "shared" / "fhir-examples"
    return Path(__file__).resolve().parents[4] / "shared" / "fhir-examples"


EXAMPLES = _examples_dir()
MAPPED_TYPES = ("DiagnosticReport", "Observation", "MedicationRequest", "Communication",
                "Appointment", "Slot")  # fmt: skip
META = {"versionId": "1", "lastUpdated": "2026-11-20T08:00:00Z"}


def _examples() -> Iterator[tuple[str, dict[str, Any]]]:
    for path in sorted(EXAMPLES.glob("*.json")):
        resource = json.loads(path.read_text(encoding="utf-8"))
        if resource.get("resourceType") == "Bundle":
            for index, entry in enumerate(resource.get("entry", [])):
                inner = entry.get("resource") if isinstance(entry, dict) else None
                if isinstance(inner, dict):
                    yield f"{path.name}#{index}", inner
        else:
            yield path.name, resource


ALL = list(_examples())
# Related resources a mapping may read (result Observations...), by `Type/id`.
RELATED = {f"{r['resourceType']}/{r['id']}": r for _, r in ALL if isinstance(r.get("id"), str)}
CASES = [(name, r) for name, r in ALL if r.get("resourceType") in MAPPED_TYPES]


def _stored(resource: dict[str, Any]) -> dict[str, Any]:
    return {**resource, "meta": {**resource.get("meta", {}), **META}}


def _map(resource: dict[str, Any]) -> Payload | Rejected | Skipped:
    if resource["resourceType"] == "Observation":
        return map_observation(resource)
    mapper = MAPPERS[resource["resourceType"]]
    return mapper.map(resource, MappingContext(patient_id="pat-test", related=RELATED))


def test_the_examples_are_there() -> None:
    assert EXAMPLES.is_dir(), EXAMPLES
    counts = Counter(r["resourceType"] for _, r in CASES)
    assert set(counts) == set(MAPPED_TYPES), counts
    assert len(CASES) > 150


@pytest.mark.parametrize(("name", "resource"), CASES, ids=[n for n, _ in CASES])
def test_example_is_mapped_or_rejected_with_a_reason(name: str, resource: dict[str, Any]) -> None:
    result = _map(_stored(resource))
    if isinstance(result, Rejected | Skipped):
        assert result.reason.strip(), name
        # Reasons are for operators and logs: short, and never the resource's narrative.
        assert len(result.reason) < 300 and "<div" not in result.reason
        return
    assert isinstance(result, Payload), (name, result)
    expected = {
        "DiagnosticReport": LabResultedV1,
        "Observation": LabObservation,
        "MedicationRequest": MedicationChangedV1,
        "Appointment": AppointmentUpdatedV1,
        "Slot": SlotUpdatedV1,
    }[resource["resourceType"]]
    assert isinstance(result, expected)
    # The payload round-trips through its JSON schema (what consumers will validate).
    assert type(result).model_validate_json(result.model_dump_json()) == result


@pytest.mark.parametrize(("name", "resource"), CASES, ids=[n for n, _ in CASES])
def test_example_as_history_entry_is_mapped_skipped_or_rejected(
    name: str, resource: dict[str, Any]
) -> None:
    result = map_history(_stored(resource))
    assert isinstance(result, ImportedEntry | Rejected | Skipped), name
    if isinstance(result, Rejected | Skipped):
        assert result.reason.strip()


def test_known_examples_map_to_the_expected_facts() -> None:
    report = _map(_stored(RELATED["DiagnosticReport/102"]))
    assert isinstance(report, LabResultedV1)
    assert report.report_fhir_id == "102"
    assert [o.observation_fhir_id for o in report.observations] == ["bmd"]
    assert report.performer == ["Dr Henry Seven"]
    assert report.source.version_id == "1"

    lipids = _map(_stored(RELATED["DiagnosticReport/lipids"]))
    assert isinstance(lipids, LabResultedV1)
    cholesterol = lipids.observations[0]
    assert cholesterol.value_quantity is not None and cholesterol.value_quantity.unit
    assert cholesterol.reference_ranges

    slot = _map(_stored(RELATED["Slot/2"]))
    assert isinstance(slot, SlotUpdatedV1)
    assert slot.status is SlotStatus.BUSY_TENTATIVE and slot.schedule_fhir_id == "example"

    contained = _map(_stored(RELATED["MedicationRequest/medrx0301"]))
    assert isinstance(contained, MedicationChangedV1) and contained.medication.code

    message = _map(_stored(RELATED["Communication/fm-solicited"]))
    assert isinstance(message, Rejected)
    assert "no Patient recipient" in message.reason


def test_a_resource_without_meta_is_rejected_with_the_reason() -> None:
    result = _map(RELATED["Slot/1"])
    assert isinstance(result, Rejected)
    assert "meta.versionId" in result.reason


def test_a_report_whose_result_cannot_be_read_is_rejected_not_published_partially() -> None:
    report = _stored(RELATED["DiagnosticReport/102"])
    result = MAPPERS["DiagnosticReport"].map(report, MappingContext(patient_id="pat-test"))
    assert isinstance(result, Rejected)
    assert "Observation/bmd" in result.reason


def test_a_preliminary_report_is_skipped() -> None:
    report = _stored({**RELATED["DiagnosticReport/102"], "status": "preliminary"})
    result = MAPPERS["DiagnosticReport"].map(
        report, MappingContext(patient_id="pat-test", related=RELATED)
    )
    assert isinstance(result, Skipped)
