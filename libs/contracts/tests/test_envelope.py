"""The CloudEvents binary-mode envelope: what is built parses, what is wrong is named."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from contracts.envelope import REQUIRED, EnvelopeError, build_headers, parse_headers

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def _headers() -> list[tuple[str, bytes]]:
    return build_headers(
        event_type="lab.resulted",
        subject="pat-1",
        source_service="ehr-connector",
        dataschema="lab.resulted/v1",
        time=datetime(2026, 11, 25, tzinfo=UTC),
        correlation_id="corr-1",
        causation_id="cause-1",
        traceparent=TRACEPARENT,
    )


def test_built_headers_parse_back() -> None:
    env = parse_headers(_headers())
    assert env.type == "lab.resulted"
    assert env.subject == "pat-1"
    assert env.source == "/services/ehr-connector"
    assert env.version == 1
    assert env.correlation_id == "corr-1"
    assert env.causation_id == "cause-1"
    assert env.traceparent == TRACEPARENT


def test_correlation_defaults_to_the_event_id() -> None:
    headers = build_headers(
        event_type="patient.linked",
        subject="p",
        source_service="gateway",
        dataschema="patient.linked/v1",
        time=datetime.now(UTC),
    )
    env = parse_headers(headers)
    assert env.correlation_id == env.id


@pytest.mark.parametrize("missing", REQUIRED)
def test_missing_required_header_is_named(missing: str) -> None:
    headers = [(k, v) for k, v in _headers() if k != missing]
    with pytest.raises(EnvelopeError) as err:
        parse_headers(headers)
    assert err.value.header == missing


@pytest.mark.parametrize(
    ("header", "value"),
    [
        ("ce_specversion", b"0.3"),
        ("ce_id", b"not-a-uuid"),
        ("ce_source", b"gateway"),
        ("ce_time", b"yesterday"),
        ("ce_time", b"2026-11-25T10:00:00"),
        ("ce_dataschema", b"lab.resulted"),
        ("ce_dataschema", b"medication.changed/v1"),
        ("content-type", b"text/plain"),
        ("traceparent", b"00-xyz"),
        ("ce_subject", b"\xff\xfe"),
    ],
)
def test_malformed_header_is_named(header: str, value: bytes) -> None:
    headers = [(k, value if k == header else v) for k, v in _headers()]
    with pytest.raises(EnvelopeError) as err:
        parse_headers(headers)
    assert err.value.header == header


def test_naive_time_is_refused_when_building() -> None:
    with pytest.raises(EnvelopeError, match="ce_time"):
        build_headers(
            event_type="patient.linked",
            subject="p",
            source_service="gateway",
            dataschema="patient.linked/v1",
            time=datetime(2026, 1, 1),
        )
