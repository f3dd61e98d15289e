"""PHI at rest in the kit's tables of records, scheduling and the gateway: an event a
consumer gives up on (dead letter, and its copy queued in the outbox for `<topic>.dlq`) and
the patient's next event held back behind it (parked) are whole payloads; each of these
services seals them with its own keys (`ENCRYPTION_KEYS`). Through a real broker and
PostgreSQL: the text is not in the table files on disk, `/ops/encryption` counts and
re-wraps them after a rotation, and an operator's discard still releases the parked event,
opened and handled."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaProducer
from asgi_lifespan import LifespanManager

from contracts.appointment import SlotStatus, SlotUpdatedV1
from contracts.base import Coding, Payload, Quantity, SourceVersion
from contracts.envelope import build_headers
from contracts.lab import LabObservation, LabResultedV1, ReportStatus
from contracts.registry import for_model
from devstack.topics import ensure_topics
from gateway.app import build as build_gateway
from gateway.settings import Settings as GatewaySettings
from records.app import build as build_records
from records.settings import Settings as RecordsSettings
from scheduling.app import build as build_scheduling
from scheduling.settings import Settings as SchedulingSettings
from servicekit.app import Service
from servicekit.testing import eventually, isolated_settings, table_file_bytes

pytestmark = [pytest.mark.integration]
OPS = {"Authorization": "Bearer a-long-test-ops-token-0123456789"}
SECRET = "Wombat-7c1d"  # stands for the patient's data in the payloads
T = datetime(2026, 11, 20, 8, 0, tzinfo=UTC)
KIT_TABLES = ["dead_letters", "parked_messages", "outbox"]


def _lab(key: str) -> LabResultedV1:
    return LabResultedV1(
        patient_id=key,
        report_fhir_id="dr-sealed",
        status=ReportStatus.FINAL,
        code=Coding(system="http://loinc.org", code="2345-7", display=f"Glucose {SECRET}"),
        effective=T,
        observations=[
            LabObservation(
                observation_fhir_id="obs-sealed",
                code=Coding(system="http://loinc.org", code="2345-7", display=SECRET),
                status="final",
                value_quantity=Quantity(value=5.1, unit="mmol/L"),
            )
        ],
        source=SourceVersion(
            resource_type="DiagnosticReport", fhir_id="dr-sealed", version_id="1", last_updated=T
        ),
    )


def _slot(key: str) -> SlotUpdatedV1:
    return SlotUpdatedV1(
        slot_fhir_id="slot-sealed",
        schedule_fhir_id=key,
        status=SlotStatus.FREE,
        start=T + timedelta(days=3),
        end=T + timedelta(days=3, minutes=20),
        source=SourceVersion(
            resource_type="Slot", fhir_id="slot-sealed", version_id="1", last_updated=T
        ),
        service_type=Coding(system="http://example.org/service", code="gp", display=SECRET),
    )


def _keys(*ids: str) -> dict[str, str]:
    return {i: base64.b64encode(i.encode().ljust(32, b"k")[:32]).decode() for i in ids}


SERVICES: dict[str, tuple[Callable[..., Service], type[Any], Callable[[str], Payload]]] = {
    "records": (build_records, RecordsSettings, _lab),
    "scheduling": (build_scheduling, SchedulingSettings, _slot),
    "gateway": (build_gateway, GatewaySettings, _lab),
}


async def _produce(bootstrap: str, prefix: str, key: str, good: Payload) -> None:
    """A broken event (a field missing, the patient's text in it), then a good one, for
    the same key: the first is dead-lettered, the second parked behind it."""
    entry = for_model(type(good))
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        broken = json.loads(good.model_dump_json())
        broken.pop("source")
        for value in (json.dumps(broken).encode(), good.model_dump_json().encode()):
            headers = build_headers(
                event_type=entry.topic,
                subject=key,
                source_service="ehr-connector",
                dataschema=entry.dataschema,
                time=datetime.now(UTC),
            )
            await producer.send_and_wait(
                prefix + entry.topic, value=value, key=key.encode(), headers=headers
            )
    finally:
        await producer.stop()


async def _ops(client: httpx.AsyncClient, method: str, path: str) -> Any:
    response = await client.request(method, path, headers=OPS)
    assert response.status_code == 200, response.text
    return response.json()


@pytest.mark.parametrize("name", sorted(SERVICES))
async def test_dead_letters_parked_events_and_outbox_are_sealed_at_rest(
    name: str, database_url: str, kafka_bootstrap: str, unique_prefix: str
) -> None:
    build, settings_class, event = SERVICES[name]
    await ensure_topics(kafka_bootstrap, unique_prefix)

    def service(keys: dict[str, str], active: str) -> Service:
        settings = settings_class(
            **isolated_settings(database_url, kafka_bootstrap, unique_prefix),
            ops_token=OPS["Authorization"].removeprefix("Bearer "),
            consumer_retry_base_s=0.01,
            consumer_max_attempts=2,
            encryption_keys=keys,
            encryption_active_key=active,
        )
        return build(settings)

    first = service(_keys("2026-11"), "2026-11")
    async with (
        LifespanManager(first.app, startup_timeout=60, shutdown_timeout=60),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=first.app), base_url="http://s") as c,
    ):
        await _produce(kafka_bootstrap, unique_prefix, "pat-sealed", event("pat-sealed"))

        async def held_back() -> bool:
            letters = await _ops(c, "GET", "/ops/dead-letters")
            return len(letters) == 1 and letters[0]["parked_behind"] == 1

        await eventually(held_back, timeout=60)
    files = await table_file_bytes(database_url, KIT_TABLES)
    assert [t for t in KIT_TABLES if SECRET.encode() in files[t]] == []

    # A rotation: the new key is active, the old one still opens the stored rows.
    second = service(_keys("2026-11", "2026-12"), "2026-12")
    async with (
        LifespanManager(second.app, startup_timeout=60, shutdown_timeout=60),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=second.app), base_url="http://s") as c,
    ):
        status = await _ops(c, "GET", "/ops/encryption")
        assert status["active_key_id"] == "2026-12"
        behind = status["not_on_active_key"]
        assert behind["dead_letters"] == 1 and behind["parked_messages"] == 1
        assert behind["outbox"] >= 1  # the dead letter's copy for <topic>.dlq
        run = await _ops(c, "POST", "/ops/encryption/reencrypt")
        assert run["reencrypted"]["dead_letters"] == 1
        assert set(run["not_on_active_key"].values()) == {0}
        # The operator gives up on the broken event: the parked one is opened and handled.
        (letter,) = await _ops(c, "GET", "/ops/dead-letters")
        done = await _ops(c, "POST", f"/ops/dead-letters/{letter['id']}/discard")
        assert done["released"] == 1 and done["new_dead_letter"] is None
    files = await table_file_bytes(database_url, KIT_TABLES)
    assert [t for t in KIT_TABLES if SECRET.encode() in files[t]] == []
