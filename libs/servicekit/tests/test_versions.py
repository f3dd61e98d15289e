"""Which EHR version is newer (servicekit.versions): the rule of every read model."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from contracts.base import SourceVersion
from servicekit.versions import is_newer, version_is_newer

T = datetime(2026, 11, 25, tzinfo=UTC)


def _v(version: str, at: datetime = T) -> SourceVersion:
    return SourceVersion(
        resource_type="DiagnosticReport", fhir_id="r1", version_id=version, last_updated=at
    )


def test_numeric_versions_compare_as_numbers_not_text() -> None:
    assert is_newer(_v("10"), "9", T)
    assert not is_newer(_v("9"), "10", T)


def test_same_version_is_not_newer_so_redelivery_changes_nothing() -> None:
    assert not is_newer(_v("3"), "3", T)


def test_opaque_versions_fall_back_to_last_updated() -> None:
    assert is_newer(_v("b", T + timedelta(seconds=1)), "a", T)
    assert not is_newer(_v("b", T - timedelta(seconds=1)), "a", T)


def test_nothing_stored_means_newer() -> None:
    assert is_newer(_v("1"), None, None)
    assert version_is_newer("x", "1") is None
