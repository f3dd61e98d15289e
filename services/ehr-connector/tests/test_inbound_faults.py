"""Lossy, duplicating, reordering delivery: after recovery every change is one event.

The sandbox drops 20% of its notifications (it believes they were sent), duplicates 10%
(each copy signed anew) and, in the second case, also reorders them. The connector sees
jumps in event numbers and heartbeats ahead of what it processed, recovers the missing
events with `$events`, and skips what it already has.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from devstack.topics import ensure_topics
from ehr_connector.settings import Settings
from ehr_sandbox.testing.http import RunningSandbox
from servicekit.app import Service

from .inbound_support import (
    Published,
    by_source,
    connector_settings,
    ehr_sandbox,
    last_of,
    link,
    ops_client,
    read_events,
    running_connector,
    settle,
    simulate,
    wait_linked,
    wait_subscriptions_active,
)

pytestmark = [pytest.mark.integration, pytest.mark.chaos]


@pytest.fixture
async def setup(
    tmp_path: Path,
    database_url: str,
    kafka_bootstrap: str,
    kafka_enable_idempotence: bool,
    unique_prefix: str,
) -> AsyncIterator[tuple[RunningSandbox, Service, Settings]]:
    await ensure_topics(kafka_bootstrap, unique_prefix)
    async with ehr_sandbox(tmp_path / "ehr") as box:
        settings = connector_settings(
            box,
            database_url=database_url,
            bootstrap=kafka_bootstrap,
            prefix=unique_prefix,
            idempotence=kafka_enable_idempotence,
            # Small notifications: more of them, so the faults hit often.
            inbound_max_count=3,
        )
        async with running_connector(settings) as service:
            await wait_subscriptions_active(settings)
            for patient_id, fhir_id in (("pt-alice", "demo-alice"), ("pt-bob", "demo-bob")):
                await link(kafka_bootstrap, unique_prefix, patient_id, fhir_id, backfill=False)
                await wait_linked(settings, patient_id)
            yield box, service, settings


def _complete(expected: set[tuple[str, str]]) -> Any:
    def check(events: list[Published]) -> bool:
        return expected <= set(by_source(events))

    return check


@pytest.mark.parametrize("reorder", [False, True], ids=["drop-dup", "drop-dup-reorder"])
async def test_every_change_is_published_exactly_once_despite_lost_and_doubled_notifications(
    setup: tuple[RunningSandbox, Service, Settings],
    kafka_bootstrap: str,
    unique_prefix: str,
    reorder: bool,
) -> None:
    box, _service, settings = setup
    faults = await box.admin.post(
        "/sandbox/faults",
        json={
            "notification_drop_rate": 0.2,
            "notification_duplicate_rate": 0.1,
            "notification_reorder": reorder,
        },
    )
    faults.raise_for_status()
    reports: set[tuple[str, str]] = set()
    medications: set[tuple[str, str]] = set()
    messages: set[tuple[str, str]] = set()
    for round_number in range(30):
        patient = "demo-alice" if round_number % 2 == 0 else "demo-bob"
        reports.add(last_of(await simulate(box, "lab-result", patient=patient), "DiagnosticReport"))
        medications.add(
            last_of(
                await simulate(box, "medication-change", patient=patient, action="dose-change"),
                "MedicationRequest",
            )
        )
        messages.add(
            last_of(
                await simulate(box, "message-reply", patient=patient, text=f"Reply {round_number}"),
                "Communication",
            )
        )
        await asyncio.sleep(0.05)

    results: dict[str, list[Published]] = {}
    for topic, expected in (
        ("lab.resulted", reports),
        ("medication.changed", medications),
        ("message.received", messages),
    ):
        results[topic] = await read_events(
            kafka_bootstrap, unique_prefix + topic, _complete(expected), timeout=120
        )
    await box.admin.delete("/sandbox/faults")
    # Duplicated or held-back copies still in flight land now; none may add an event.
    await settle(4)
    for topic, expected in (
        ("lab.resulted", reports),
        ("medication.changed", medications),
        ("message.received", messages),
    ):
        events = await read_events(
            kafka_bootstrap, unique_prefix + topic, _complete(expected), timeout=60
        )
        counts = by_source(events)
        assert set(counts) == expected, topic
        assert all(n == 1 for n in counts.values()), (
            topic,
            [k for k, n in counts.items() if n > 1],
        )

    async with ops_client(settings) as client:
        metrics = (await client.get("/metrics")).text
        subscriptions = (await client.get("/ops/subscriptions")).json()
    # The faults did hit: gaps were detected and recovered, duplicates skipped.
    assert "inbound_gaps_recovered_total" in metrics
    recovered = [
        line
        for line in metrics.splitlines()
        if line.startswith("inbound_events_recovered_total{") and not line.endswith(" 0.0")
    ]
    assert recovered, "some events came back through $events"
    for row in subscriptions:
        assert row["last_event_number"] == row["highest_event_number"], row
