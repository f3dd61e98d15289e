"""Log lines an operator (and a log pipeline) can trust: with LOG_FORMAT=json every line of
a process is one JSON object, uvicorn's and FastStream's included, with no colour codes and
no per-message chatter at INFO; the PHI filter drops names, birth dates and free text but
leaves ids, FHIR search operators and HTTP status lines readable."""

from __future__ import annotations

import json
import logging
import logging.config
import os
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import uvicorn.config
from asgi_lifespan import LifespanManager

from contracts.patient import PatientLinkedV1
from devstack.topics import ensure_topics
from servicekit.logging import configure_logging, get_logger
from servicekit.settings import ServiceSettings
from servicekit.testing import eventually, produce_events

from . import fakeservice
from .fakeservice import effects

UUID = "3fa85f64-5717-4562-b3fc-2c963f66afa6"
SEARCH = "DiagnosticReport?_lastUpdated=gt2026-11-20T08:00:00+00:00&_sort=-_lastUpdated"
OPERATORS = "date=ge2026-11-20T08:00:00Z&date=le2026-11-21T08:00:00.250+01:00"
FHIR_IDS = ["Patient/123-456-7890", "Observation/lab-2026-11-20-001/_history/3", "demo-alice"]
STATUS_LINES = ["HTTP/1.1 503 Service Unavailable", '"GET /v1/me HTTP/1.1" 404 Not Found']
NAME = "Peter James Chalmers"
BIRTH = "1974-12-25"


def _lines(out: str) -> list[dict[str, object]]:
    assert "\x1b[" not in out, "colour codes in the log"
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def test_ids_operators_and_status_lines_survive_and_phi_does_not(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging("test", "DEBUG", "json")
    get_logger("t").info(
        "inbound.search",
        subscription_id=UUID,
        report_fhir_id="123-456-7890",
        query=SEARCH,
        operators=OPERATORS,
        references=FHIR_IDS,
        upstream=STATUS_LINES,
        detail=f"linked {NAME}, born {BIRTH}, searched birthdate=ge{BIRTH}",
        note="feels dizzy since Tuesday",
    )
    out = capsys.readouterr().out
    record = _lines(out)[-1]
    assert record["subscription_id"] == UUID
    assert record["report_fhir_id"] == "123-456-7890"
    assert record["query"] == SEARCH
    assert record["operators"] == OPERATORS
    assert record["references"] == FHIR_IDS
    assert record["upstream"] == STATUS_LINES
    for secret in (NAME, "Peter", "Chalmers", BIRTH, "dizzy"):
        assert secret not in out
    assert record["note"] == "[redacted]"


def test_uvicorn_and_faststream_lines_come_out_json(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # As a process under `uvicorn` starts: uvicorn's own coloured handlers are in place
    # and FastStream's module logger has its own; then the app factory configures logging.
    logging.config.dictConfig(uvicorn.config.LOGGING_CONFIG)
    import faststream._internal.logger.logging  # noqa: F401 - creates FastStream's logger

    configure_logging("test", "DEBUG", "json")
    logging.getLogger("uvicorn.error").info("Started server process [%d]", 4242)
    logging.getLogger("uvicorn.access").info(
        '%s - "%s %s HTTP/%s" %d', "127.0.0.1:5000", "GET", "/v1/me", "1.1", 404
    )
    logging.getLogger("faststream").warning("faststream says hello")
    captured = capsys.readouterr()
    records = _lines(captured.out + captured.err)
    events = [r["event"] for r in records]
    assert "Started server process [4242]" in events
    assert '127.0.0.1:5000 - "GET /v1/me HTTP/1.1" 404' in events
    assert "faststream says hello" in events
    assert all(r["service"] == "test" for r in records)


async def test_an_outgoing_http_call_is_logged_only_at_debug(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # httpx logs every call at INFO; a gateway under load made one line per upstream call.
    async def app(scope: dict[str, object], receive: object, send: Any) -> None:
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    for level, expected in (("INFO", False), ("DEBUG", True)):
        configure_logging("test", level, "json")
        transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
        async with httpx.AsyncClient(transport=transport, base_url="http://svc") as client:
            assert (await client.get("/ping")).status_code == 204
        events = [r["event"] for r in _lines(capsys.readouterr().out)]
        logged = any("http://svc/ping" in str(e) for e in events)
        assert logged is expected, (level, events)
    configure_logging("test", "INFO", "json")


@pytest.mark.integration
async def test_a_consumed_message_logs_no_received_or_processed_line_at_info(
    capsys: pytest.CaptureFixture[str],
    database_url: str,
    kafka_bootstrap: str,
    unique_prefix: str,
) -> None:
    settings = ServiceSettings(
        service_name="logs",
        database_url=database_url,
        kafka_bootstrap_servers=kafka_bootstrap,
        kafka_enable_idempotence=os.environ.get("KAFKA", "tansu") == "apache",
        topic_prefix=unique_prefix,
        group_prefix=unique_prefix,
        log_level="INFO",
    )
    await ensure_topics(kafka_bootstrap, unique_prefix)
    svc = fakeservice.build(settings)
    async with LifespanManager(svc.app, startup_timeout=60, shutdown_timeout=60):
        linked = PatientLinkedV1(patient_id="p1", patient_fhir_id="m", linked_at=datetime.now(UTC))
        await produce_events(kafka_bootstrap, [("p1", linked)], topic_prefix=unique_prefix)

        async def handled() -> bool:
            async with svc.db.sessions() as session:
                return bool(await effects(session))

        await eventually(handled, timeout=60)
    captured = capsys.readouterr()
    records = _lines(captured.out + captured.err)
    assert any(r["event"] == "service.started" for r in records)
    assert not [r for r in records if r["event"] in ("Received", "Processed")]
