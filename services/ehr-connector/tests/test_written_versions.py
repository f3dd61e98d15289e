"""The client's memory of the portal's versions it wrote (the inbound echo fast path)."""

from __future__ import annotations

from typing import Any

from ehr_connector.ehr.written import WrittenVersions
from ehr_connector.outbound.domain.tags import tagged


def _ours(resource_type: str) -> dict[str, Any]:
    return tagged({"resourceType": resource_type})


def test_a_written_version_is_remembered_exactly() -> None:
    written = WrittenVersions()
    written.note_write(_ours("Appointment"), "a1", "2")
    assert ("Appointment", "a1", "2") in written
    assert ("Appointment", "a1", "3") not in written
    assert ("Slot", "a1", "2") not in written


def test_only_the_portals_writes_count() -> None:
    written = WrittenVersions()
    # The canary's lab result: written untagged to come back as an event.
    written.note_write({"resourceType": "DiagnosticReport"}, "r1", "1")
    assert ("DiagnosticReport", "r1", "1") not in written


def test_a_server_without_versions_leaves_nothing_to_recognise() -> None:
    written = WrittenVersions()
    written.note_write(_ours("Appointment"), "a1", "")
    assert len(written) == 0


def test_the_oldest_versions_are_forgotten_first() -> None:
    written = WrittenVersions(capacity=2)
    slot = _ours("Slot")
    written.note_write(slot, "s1", "1")
    written.note_write(slot, "s1", "2")
    written.note_write(slot, "s1", "1")  # noted again: the newest now
    written.note_write(slot, "s1", "3")
    assert ("Slot", "s1", "2") not in written
    assert ("Slot", "s1", "1") in written
    assert ("Slot", "s1", "3") in written
    assert len(written) == 2
