"""Benchmark 5's history generator (bench/benchkit/backfill.py): the resources it writes
to the EHR are what the sandbox accepts and the back-fill imports, and the portal counts
it expects follow from them. No benchmark runs here and no figure is judged."""

from __future__ import annotations

import sys
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from benchkit.backfill import YEARS, history

from ehr_sandbox.fhir.validation import validate_resource


def test_a_history_has_the_size_and_mix_asked_for() -> None:
    written = history("p-1", 1000)
    kinds = Counter(r["resourceType"] for r in written.resources)
    assert 1000 <= len(written.resources) <= 1010
    assert kinds["Observation"] + kinds["DiagnosticReport"] >= 900
    assert kinds["DiagnosticReport"] == len(written.reports)
    assert kinds["MedicationRequest"] == written.lists["medications"]
    assert kinds["Condition"] == written.lists["conditions"]
    assert kinds["AllergyIntolerance"] == written.lists["allergies"]
    assert kinds["Immunization"] == written.lists["immunizations"]
    ids = [r["id"] for r in written.resources]
    assert len(set(ids)) == len(ids)


def test_every_report_names_its_observations_of_the_same_patient() -> None:
    written = history("p-1", 300)
    by_id = {r["id"]: r for r in written.resources}
    for report_id, results in written.reports.items():
        report = by_id[report_id]
        named = [ref["reference"].split("/", 1)[1] for ref in report["result"]]
        assert len(named) == results
        assert all(by_id[o]["subject"]["reference"] == "Patient/p-1" for o in named)


def test_the_history_spans_five_years_and_is_valid_fhir() -> None:
    written = history("p-1", 300)
    now = datetime.now(UTC)
    dates = [
        datetime.fromisoformat(r["effectiveDateTime"])
        for r in written.resources
        if r["resourceType"] == "DiagnosticReport"
    ]
    assert min(dates) >= now - timedelta(days=365 * YEARS + 1)
    assert max(dates) - min(dates) > timedelta(days=365 * (YEARS - 1))
    for resource in written.resources:
        validate_resource(
            resource, expected_type=resource["resourceType"], expected_id=resource["id"]
        )
