"""No PHI reaches a log line: names and birth dates are dropped whatever field carries them."""

from __future__ import annotations

import json
import logging

import pytest
import structlog

from servicekit.logging import configure_logging, get_logger, scrub

NAME = "Peter James Chalmers"
BIRTH = "1974-12-25"


def _emitted(capsys: pytest.CaptureFixture[str]) -> str:
    return capsys.readouterr().out


@pytest.mark.parametrize(
    "fields",
    [
        {"name": NAME},
        {"patient_name": NAME},
        {"given": "Peter", "family": "Chalmers"},
        {"birthDate": BIRTH},
        {"dob": BIRTH},
        {"detail": f"linked {NAME} born {BIRTH}"},
        {"context": {"patient": {"name": [{"text": NAME}], "birthDate": BIRTH}}},
        {"items": [NAME, {"note": f"born {BIRTH}"}]},
        {"error": f"ValueError: bad birth date {BIRTH} for {NAME}"},
        {"dob_us": "12/25/1974"},
        {"contact": "peter@example.org +1 555 123 4567"},
    ],
)
def test_phi_in_any_field_is_not_emitted(
    capsys: pytest.CaptureFixture[str], fields: dict[str, object]
) -> None:
    configure_logging("test", "DEBUG", "json")
    get_logger("t").info("patient.linked", patient_id="pat-7f3a2c", **fields)
    out = _emitted(capsys)
    for secret in (
        NAME,
        "Peter",
        "Chalmers",
        BIRTH,
        "12/25/1974",
        "peter@example.org",
        "555 123 4567",
    ):
        assert secret not in out
    record = json.loads(out.strip().splitlines()[-1])
    assert record["patient_id"] == "pat-7f3a2c"  # internal ids survive
    assert record["event"] == "patient.linked"
    assert record["service"] == "test"


def test_phi_in_the_event_text_itself_is_masked(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("test", "DEBUG", "json")
    get_logger("t").warning(f"could not link {NAME}, born {BIRTH}")
    out = _emitted(capsys)
    assert NAME not in out and BIRTH not in out


def test_standard_library_records_are_scrubbed_too(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("test", "DEBUG", "json")
    logging.getLogger("somelib").error("request for %s failed", NAME)
    assert NAME not in _emitted(capsys)


def test_exception_tracebacks_are_scrubbed(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("test", "DEBUG", "json")
    try:
        raise ValueError(f"invalid birth date {BIRTH}")
    except ValueError:
        get_logger("t").exception("failed")
    out = _emitted(capsys)
    assert BIRTH not in out
    assert "ValueError" in out


def test_trace_ids_are_attached_inside_a_span(capsys: pytest.CaptureFixture[str]) -> None:
    from opentelemetry.sdk.trace import TracerProvider

    configure_logging("test", "DEBUG", "json")
    with TracerProvider().get_tracer("t").start_as_current_span("s"):
        get_logger("t").info("inside")
    record = json.loads(_emitted(capsys).strip().splitlines()[-1])
    assert len(record["trace_id"]) == 32 and len(record["span_id"]) == 16


def test_scrub_keeps_operational_facts() -> None:
    assert scrub({"topic": "lab.resulted", "offset": 12, "ok": True}) == {
        "topic": "lab.resulted",
        "offset": 12,
        "ok": True,
    }
    structlog.reset_defaults()
