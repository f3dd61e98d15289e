"""Slot sync: every upcoming slot of the EHR is published once as `slot.updated` (so a
fresh scheduling cache can offer them), and a second pass publishes nothing new."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from contracts.appointment import SlotUpdatedV1
from devstack.topics import ensure_topics
from ehr_connector.inbound.service.lifecycle import inbound_of
from servicekit.testing import read_topic

from .inbound_support import connector_settings, ehr_sandbox, running_connector

pytestmark = [pytest.mark.integration]

SYNC_DAYS = 5


async def test_upcoming_slots_are_published_once(
    tmp_path: Path,
    database_url: str,
    kafka_bootstrap: str,
    kafka_enable_idempotence: bool,
    unique_prefix: str,
) -> None:
    await ensure_topics(kafka_bootstrap, unique_prefix)
    async with ehr_sandbox(tmp_path / "ehr") as box:
        now = datetime.now(UTC)
        # The clinic opens on weekdays only, and a window of 3 days from a Friday holds a
        # weekend and a Monday that starts after the window ends (a run on a Friday found
        # no slot at all); any 5 days from now hold at least two whole weekdays.
        window = {
            "start": [f"ge{now.isoformat()}", f"lt{(now + timedelta(days=SYNC_DAYS)).isoformat()}"],
            "_summary": "count",
        }
        expected = (await box.admin.get("/fhir/Slot", params=window)).json()["total"]
        assert expected > 10  # the seeded clinic has slots in the next days
        settings = connector_settings(
            box,
            database_url=database_url,
            bootstrap=kafka_bootstrap,
            prefix=unique_prefix,
            idempotence=kafka_enable_idempotence,
            inbound_enabled=False,
            slot_sync_enabled=True,
            slot_sync_days=SYNC_DAYS,
        )
        async with running_connector(settings) as service:
            records = await read_topic(
                kafka_bootstrap,
                unique_prefix + "slot.updated",
                until=lambda seen: len(seen) >= expected,
                timeout=120,
            )
            inbound = inbound_of(service)
            assert inbound is not None
            assert await inbound.slot_sync.sync_once(now) == 0  # nothing new: nothing again
    slots = [SlotUpdatedV1.model_validate_json(r.value) for r in records]
    assert max(Counter(s.slot_fhir_id for s in slots).values()) == 1
    assert {s.practitioner_fhir_id for s in slots} >= {"dr-adams"}
    assert all(r.key.startswith("schedule:") for r in records)
