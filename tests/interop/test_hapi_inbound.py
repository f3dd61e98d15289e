"""Inbound against HAPI: Subscriptions HAPI accepts and activates, found again (not
duplicated) by a second `ensure` despite HAPI's search cache; HAPI's notifications answered
so that it delivers each once; lab, medication, message and appointment changes published;
slot sync and back-fill through HAPI's paging; lost notifications recovered by the
periodic `_lastUpdated` reconciliation that replaces heartbeats and `$status`."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any

import pytest

from contracts.patient import PatientLinkedV1
from devstack.topics import ensure_topics
from ehr_connector import store as connector_store
from ehr_connector.inbound.service.subscriptions import (
    OWNER_TAG,
    SubscriptionManager,
    filter_criteria,
)
from ehr_connector.settings import Settings
from servicekit.app import Service
from servicekit.testing import Seen, eventually, produce_events, read_topic

from .conftest import Chart, Hapi, hapi_settings, ops_client, running_connector, seed_chart

pytestmark = [pytest.mark.interop]


async def _link(settings: Settings, patient_id: str, fhir_id: str, *, backfill: bool) -> None:
    await produce_events(
        settings.kafka_bootstrap_servers,
        [
            (
                patient_id,
                PatientLinkedV1(
                    patient_id=patient_id,
                    patient_fhir_id=fhir_id,
                    linked_at=datetime.now(UTC),
                    backfill=backfill,
                ),
            )
        ],
        topic_prefix=settings.topic_prefix,
    )


async def _linked(service: Service, patient_id: str) -> None:
    """Wait until the connector consumed `patient.linked` (events before it are not theirs)."""

    async def known() -> bool:
        async with service.db.sessions() as session:
            return await connector_store.patient_fhir_id_of(session, patient_id) is not None

    await eventually(known, timeout=60, interval=0.2)


async def _events(
    settings: Settings, topic: str, patient_id: str, want: int = 1, timeout: float = 120
) -> list[dict[str, Any]]:
    """Payloads of `topic` for one patient, once at least `want` were published."""

    def mine(records: list[Seen]) -> list[dict[str, Any]]:
        return [json.loads(r.value) for r in records if r.key == patient_id]

    records = await read_topic(
        settings.kafka_bootstrap_servers,
        settings.topic_prefix + topic,
        until=lambda seen: len(mine(seen)) >= want,
        timeout=timeout,
    )
    return mine(records)


async def _ours(hapi: Hapi, settings: Settings) -> list[dict[str, Any]]:
    found = await hapi.search(
        "Subscription", _tag=f"{OWNER_TAG['system']}|{OWNER_TAG['code']}", status="active"
    )
    return [s for s in found if s["channel"]["endpoint"] == settings.inbound_webhook_url]


async def _wait_active(settings: Settings) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []

    async def active() -> bool:
        nonlocal rows
        async with ops_client(settings) as client:
            response = await client.get("/ops/subscriptions")
        rows = response.json() if response.status_code == 200 else []
        return len(rows) == len(settings.inbound_topics) and all(
            r["status"] == "active" for r in rows
        )

    await eventually(active, timeout=120, interval=0.5)
    return rows


def _lab(chart: Chart, status: str = "final") -> tuple[dict[str, Any], dict[str, Any]]:
    observation = {
        "resourceType": "Observation",
        "status": status,
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                        "code": "laboratory",
                    }
                ]
            }
        ],
        "code": {"coding": [{"system": "http://loinc.org", "code": "718-7"}], "text": "Hb"},
        "subject": {"reference": f"Patient/{chart.patient}"},
        "effectiveDateTime": datetime.now(UTC).isoformat(),
        "valueQuantity": {
            "value": 13.2,
            "unit": "g/dL",
            "system": "http://unitsofmeasure.org",
            "code": "g/dL",
        },
    }
    report = {
        "resourceType": "DiagnosticReport",
        "status": status,
        "category": observation["category"],
        "code": {"coding": [{"system": "http://loinc.org", "code": "58410-2"}], "text": "CBC"},
        "subject": {"reference": f"Patient/{chart.patient}"},
        "effectiveDateTime": datetime.now(UTC).isoformat(),
        "issued": datetime.now(UTC).isoformat(),
    }
    return report, observation


async def _file_lab(hapi: Hapi, chart: Chart) -> str:
    report, observation = _lab(chart)
    written = await hapi.post(observation)
    report["result"] = [{"reference": f"Observation/{written['id']}"}]
    return str((await hapi.post(report))["id"])


async def test_subscriptions_changes_and_history_flow_from_hapi(
    hapi: Hapi,
    database_url: str,
    kafka_bootstrap: str,
    kafka_enable_idempotence: bool,
    unique_prefix: str,
) -> None:
    log_start = hapi.server.log_path.stat().st_size
    chart = await seed_chart(hapi, slots=3)
    # History from before the link, imported by the back-fill through HAPI's paging.
    for _ in range(3):
        await _file_lab(hapi, chart)
    await ensure_topics(kafka_bootstrap, unique_prefix)
    settings = hapi_settings(
        hapi,
        database_url=database_url,
        bootstrap=kafka_bootstrap,
        prefix=unique_prefix,
        idempotence=kafka_enable_idempotence,
        slot_sync_enabled=True,
        backfill_page_size=2,
    )
    patient = "pat-hapi-" + chart.patient
    # Left over from an earlier configuration: ours (tag, endpoint), a topic we no longer use.
    manager = SubscriptionManager(settings, None, None)  # type: ignore[arg-type]
    orphan = manager.desired(
        "http://portal.example.org/fhir/SubscriptionTopic/observation-final",
        "Observation",
        "active",
    )
    orphan_id = (await hapi.post(orphan))["id"]
    async with running_connector(settings) as service:
        rows = await _wait_active(settings)
        assert {r["topic"] for r in rows} == set(settings.inbound_topics.values())

        # The startup pass switches the orphan off after it ensured every topic (the rows
        # above may all be active a moment before that step).
        async def orphan_off() -> bool:
            return bool(
                (await hapi.client.get(f"Subscription/{orphan_id}")).json()["status"] == "off"
            )

        await eventually(orphan_off, timeout=60, interval=0.5)
        ours = await _ours(hapi, settings)
        assert len(ours) == len(settings.inbound_topics)
        # Server-wide filters, the form HAPI requires (it refuses to activate without).
        by_topic = {v: k for k, v in settings.inbound_topics.items()}
        for subscription in ours:
            assert filter_criteria(subscription) == [f"{by_topic[subscription['criteria']]}?"]
            # Valid R4. Its `meta.profile` names the Backport IG's profile, which HAPI needs
            # (it is what makes `criteria` a topic) but its validator does not have (no IG
            # package is loaded): the claim is set aside, the content checked against R4.
            claimless = {**subscription, "meta": {"tag": subscription["meta"]["tag"]}}
            assert await hapi.validation_errors(claimless) == []
        # A second ensure right away (HAPI would answer a cached search): nothing new.
        async with ops_client(settings) as client:
            again = await client.post("/ops/subscriptions/ensure")
        assert again.status_code == 200
        actions = {r["topic"]: r["action"] for r in again.json()}
        assert set(actions.values()) <= {"ok"}, actions
        assert (await hapi.client.get(f"Subscription/{orphan_id}")).json()["status"] == "off"
        assert len(await _ours(hapi, settings)) == len(settings.inbound_topics)

        # Slot sync published the practitioner's upcoming slots.
        slots = await read_topic(
            kafka_bootstrap,
            unique_prefix + "slot.updated",
            until=lambda seen: (
                {s["id"] for s in chart.slots}
                <= {json.loads(r.value)["slot_fhir_id"] for r in seen}
            ),
            timeout=120,
        )
        assert slots

        await _link(settings, patient, chart.patient, backfill=True)
        imported = await read_topic(
            kafka_bootstrap,
            unique_prefix + "record.imported",
            until=lambda seen: any(r.key == patient for r in seen),
            timeout=120,
        )
        assert imported

        await _linked(service, patient)
        # Live changes on HAPI, each notified by HAPI and published once.
        report_id = await _file_lab(hapi, chart)
        [lab] = [
            e
            for e in await _events(settings, "lab.resulted", patient)
            if e["report_fhir_id"] == report_id
        ]
        assert lab["patient_id"] == patient

        medication = await hapi.post(
            {
                "resourceType": "MedicationRequest",
                "status": "active",
                "intent": "order",
                "medicationCodeableConcept": {
                    "coding": [
                        {
                            "system": "http://www.nlm.nih.gov/research/umls/rxnorm",
                            "code": "197361",
                        }
                    ],
                    "text": "Amlodipine 5 mg",
                },
                "subject": {"reference": f"Patient/{chart.patient}"},
                "authoredOn": datetime.now(UTC).isoformat(),
                "requester": {"reference": f"Practitioner/{chart.practitioner}"},
                "dosageInstruction": [{"text": "once daily"}],
            }
        )
        changed = await _events(settings, "medication.changed", patient)
        assert [e["medication_request_fhir_id"] for e in changed] == [medication["id"]]

        reply = await hapi.post(
            {
                "resourceType": "Communication",
                "status": "completed",
                "subject": {"reference": f"Patient/{chart.patient}"},
                "recipient": [{"reference": f"Patient/{chart.patient}"}],
                "sender": {"reference": f"Practitioner/{chart.practitioner}"},
                "sent": datetime.now(UTC).isoformat(),
                "payload": [{"contentString": "Your results are normal."}],
            }
        )
        received = await _events(settings, "message.received", patient)
        assert [e["communication_fhir_id"] for e in received] == [reply["id"]]

        slot = chart.slots[1]
        appointment = await hapi.post(
            {
                "resourceType": "Appointment",
                "status": "booked",
                "slot": [{"reference": f"Slot/{slot['id']}"}],
                "start": slot["start"],
                "end": slot["end"],
                "participant": [
                    {"actor": {"reference": f"Patient/{chart.patient}"}, "status": "accepted"},
                    {
                        "actor": {"reference": f"Practitioner/{chart.practitioner}"},
                        "status": "accepted",
                    },
                ],
            }
        )
        appointment["status"] = "cancelled"
        response = await hapi.client.put(
            f"Appointment/{appointment['id']}",
            json=appointment,
            headers={"If-Match": f'W/"{appointment["meta"]["versionId"]}"'},
        )
        assert response.status_code == 200

        def cancelled(records: list[Seen]) -> bool:
            return any(
                r.key == patient
                and json.loads(r.value)["appointment_fhir_id"] == appointment["id"]
                and json.loads(r.value)["status"] == "cancelled"
                for r in records
            )

        await read_topic(
            kafka_bootstrap, unique_prefix + "appointment.updated", until=cancelled, timeout=120
        )
        # HAPI delivered each notification to our Subscriptions once: the webhook's answers
        # were accepted. (The orphan may still get a delivery in flight as it is switched
        # off; the webhook rightly answers 404 for a Subscription it does not own.)
        ours = {f"Subscription/{s['id']}" for s in await _ours(hapi, settings)}
        with hapi.server.log_path.open("rb") as log:
            log.seek(log_start)
            failures = re.findall(
                rb"Failure handling subscription payload for subscription: (Subscription/\S+)",
                log.read(),
            )
        assert {f.decode() for f in failures} & ours == set()


async def test_lost_notifications_are_found_by_reconciliation(
    hapi: Hapi,
    database_url: str,
    kafka_bootstrap: str,
    kafka_enable_idempotence: bool,
    unique_prefix: str,
) -> None:
    """HAPI cannot reach the webhook (its notifications are lost) and offers no `$status`,
    `$events` or heartbeats: the periodic `_lastUpdated` search still publishes the result."""
    chart = await seed_chart(hapi, slots=1)
    await ensure_topics(kafka_bootstrap, unique_prefix)
    settings = hapi_settings(
        hapi,
        database_url=database_url,
        bootstrap=kafka_bootstrap,
        prefix=unique_prefix,
        idempotence=kafka_enable_idempotence,
    )
    # A webhook address nothing listens on: HAPI's deliveries fail, as behind a partition.
    dead = hapi_settings(
        hapi,
        database_url=database_url,
        bootstrap=kafka_bootstrap,
        prefix=unique_prefix,
        idempotence=kafka_enable_idempotence,
    ).inbound_webhook_url
    settings = settings.model_copy(update={"inbound_webhook_url": dead})
    patient = "pat-gap-" + chart.patient
    async with running_connector(settings) as service:
        await _wait_active(settings)
        await _link(settings, patient, chart.patient, backfill=False)
        await _linked(service, patient)
        report_id = await _file_lab(hapi, chart)
        labs = await _events(settings, "lab.resulted", patient)
        assert [e["report_fhir_id"] for e in labs] == [report_id]


async def test_classic_criteria_subscriptions_bring_the_same_events(
    hapi: Hapi,
    database_url: str,
    kafka_bootstrap: str,
    kafka_enable_idempotence: bool,
    unique_prefix: str,
) -> None:
    """For a server without topics: classic R4 criteria Subscriptions with no payload; each
    empty notification makes the connector search the type, and the result is published
    like a topic notification's (a report that is not final publishes nothing)."""
    chart = await seed_chart(hapi, slots=1)
    await ensure_topics(kafka_bootstrap, unique_prefix)
    settings = hapi_settings(
        hapi,
        database_url=database_url,
        bootstrap=kafka_bootstrap,
        prefix=unique_prefix,
        idempotence=kafka_enable_idempotence,
        ehr_subscription_style="criteria",
        # Long enough that the notification, not the periodic search, is what finds it.
        inbound_reconcile_interval_s=3600.0,
    )
    patient = "pat-criteria-" + chart.patient
    async with running_connector(settings) as service:
        await _wait_active(settings)
        found = await hapi.search(
            "Subscription", _tag=f"{OWNER_TAG['system']}|{OWNER_TAG['code']}", status="active"
        )
        ours = [
            s
            for s in found
            if s["channel"]["endpoint"].startswith(settings.inbound_webhook_url + "/criteria/")
        ]
        assert sorted(s["criteria"] for s in ours) == sorted(settings.inbound_criteria.values())
        for subscription in ours:
            assert await hapi.validation_errors(subscription) == []
        await _link(settings, patient, chart.patient, backfill=False)
        await _linked(service, patient)
        preliminary, _ = _lab(chart, status="preliminary")
        await hapi.post(preliminary)
        report_id = await _file_lab(hapi, chart)
        labs = await _events(settings, "lab.resulted", patient)
        assert [e["report_fhir_id"] for e in labs] == [report_id]
