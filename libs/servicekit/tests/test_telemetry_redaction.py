"""Span attributes keep the shape of a call, never ids, names or query strings."""

from __future__ import annotations

import pytest

from servicekit.telemetry import redact_path, redact_url


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "http://ehr:8090/fhir/Patient/demo-alice/$everything?_count=50",
            "http://ehr:8090/fhir/Patient/{id}/$everything",
        ),
        (
            "https://u:secret@ehr/fhir/Appointment?patient=Patient/demo-alice&identifier=urn|123",
            "https://ehr/fhir/Appointment",
        ),
        ("http://ehr/fhir/Patient?name=Chalmers&birthdate=1974-12-25", "http://ehr/fhir/Patient"),
        ("http://gw/v1/me/lab-results/dr-77#x", "http://gw/v1/me/lab-results/{id}"),
    ],
)
def test_urls_lose_query_credentials_and_ids(url: str, expected: str) -> None:
    assert redact_url(url) == expected


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/patients/pat-0af3/lab-results", "/patients/{id}/lab-results"),
        ("/fhir/Subscription/abc/$status", "/fhir/Subscription/{id}/$status"),
        ("/fhir/Patient/demo-alice/_history/3", "/fhir/Patient/{id}/_history/{id}"),
        ("/fhir/metadata", "/fhir/metadata"),
        ("/v1/me/summary", "/v1/me/summary"),
    ],
)
def test_paths_keep_route_words_only(path: str, expected: str) -> None:
    assert redact_path(path) == expected
