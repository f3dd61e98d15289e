"""The connector SIGKILLed in the middle of a burst of 500 clinician actions.

While it is down the sandbox's deliveries fail (and after a few failures it puts the
Subscriptions in `error`); notifications in flight at the kill may have been processed
without their 200 reaching the EHR. After the restart the connector re-activates its
Subscriptions, catches up (redelivery, `$status` and `$events`), and every change that
happened during the burst comes out exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from devstack.topics import ensure_topics
from ehr_sandbox.testing.http import RunningSandbox

from .inbound_support import (
    ConnectorProcess,
    Published,
    by_source,
    connector_settings,
    ehr_sandbox,
    last_of,
    link,
    ops_client,
    read_events,
    settle,
    simulate,
    wait_linked,
    wait_subscriptions_active,
)

pytestmark = [pytest.mark.integration, pytest.mark.chaos]
ACTIONS = 500
KILL_AT = 150
RESTART_AT = 300


@pytest.fixture
async def box(tmp_path: Path) -> AsyncIterator[RunningSandbox]:
    async with ehr_sandbox(tmp_path / "ehr", delivery_max_failures=5) as running:
        yield running


async def test_a_killed_connector_loses_and_doubles_nothing_of_a_burst(
    box: RunningSandbox,
    tmp_path: Path,
    database_url: str,
    kafka_bootstrap: str,
    kafka_enable_idempotence: bool,
    unique_prefix: str,
) -> None:
    await ensure_topics(kafka_bootstrap, unique_prefix)
    settings = connector_settings(
        box,
        database_url=database_url,
        bootstrap=kafka_bootstrap,
        prefix=unique_prefix,
        idempotence=kafka_enable_idempotence,
        inbound_ensure_interval_s=3.0,
    )
    process = ConnectorProcess(settings, tmp_path / "connector.log")
    await process.start()
    expected: dict[str, set[tuple[str, str]]] = {
        "lab.resulted": set(),
        "medication.changed": set(),
        "message.received": set(),
    }
    done = 0
    reached = {KILL_AT: asyncio.Event(), RESTART_AT: asyncio.Event()}
    try:
        await wait_subscriptions_active(settings)
        for patient_id, fhir_id in (("pt-alice", "demo-alice"), ("pt-bob", "demo-bob")):
            await link(kafka_bootstrap, unique_prefix, patient_id, fhir_id, backfill=False)
            await wait_linked(settings, patient_id)

        async def burst() -> None:
            nonlocal done
            for number in range(ACTIONS):
                patient = ("demo-alice", "demo-bob")[number % 2]
                kind = number % 10
                if kind < 4:
                    written = await simulate(box, "lab-result", patient=patient, panel="a1c")
                    expected["lab.resulted"].add(last_of(written, "DiagnosticReport"))
                elif kind < 7:
                    written = await simulate(
                        box, "medication-change", patient=patient, action="dose-change"
                    )
                    expected["medication.changed"].add(last_of(written, "MedicationRequest"))
                else:
                    written = await simulate(
                        box, "message-reply", patient=patient, text=f"Message {number}"
                    )
                    expected["message.received"].add(last_of(written, "Communication"))
                done += 1
                if done in reached:
                    reached[done].set()

        task = asyncio.create_task(burst())
        await reached[KILL_AT].wait()
        await process.kill()
        await reached[RESTART_AT].wait()
        await process.start()
        await task

        for topic, changes in expected.items():

            def complete(events: list[Published], wanted: set[tuple[str, str]] = changes) -> bool:
                return wanted <= set(by_source(events))

            await read_events(kafka_bootstrap, unique_prefix + topic, complete, timeout=240)
        await settle(5)
        for topic, changes in expected.items():
            events = await read_events(kafka_bootstrap, unique_prefix + topic, lambda es: bool(es))
            counts = by_source(events)
            assert set(counts) == changes, topic
            doubled = [source for source, n in counts.items() if n > 1]
            assert not doubled, (topic, doubled)
        assert sum(len(c) for c in expected.values()) == ACTIONS
        async with ops_client(settings) as client:
            subscriptions = (await client.get("/ops/subscriptions")).json()
        assert all(s["status"] == "active" for s in subscriptions), subscriptions
    except BaseException:
        with contextlib.suppress(OSError):
            print(process.log_path.read_text()[-5000:])
        raise
    finally:
        await process.stop()
