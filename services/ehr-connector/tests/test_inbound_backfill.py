"""Back-fill of a linked patient's history as `record.imported` batches.

- `patient.linked` imports demo-alice's history in numbered batches, progress visible at
  `GET /ops/backfill/{patient_id}`, every importable resource exactly once;
- the connector SIGKILLed in the middle of a back-fill and started again resumes from its
  stored cursor: nothing lost, nothing doubled;
- a live notification queued while back-fill batches wait in the outbox is published
  before the remaining batches (outbox priority);
- while live notifications arrive, a back-fill rests between pages (its share of the
  time) and still imports everything once.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY
from sqlalchemy import select

from contracts.record import ImportedEntry
from devstack.topics import ensure_topics
from ehr_connector.inbound.domain.mapping.history import IMPORTED_TYPES, map_history
from ehr_connector.settings import Settings
from ehr_sandbox.testing.http import RunningSandbox
from servicekit.outbox import OutboxRelay
from servicekit.tables import OutboxRow
from servicekit.testing import eventually

from .inbound_support import (
    OPS,
    ConnectorProcess,
    Published,
    connector_settings,
    ehr_sandbox,
    last_of,
    link,
    ops_client,
    read_events,
    running_connector,
    simulate,
    wait_subscriptions_active,
)

pytestmark = [pytest.mark.integration]
ALICE = "pt-alice"


@pytest.fixture
async def box(tmp_path: Path) -> AsyncIterator[RunningSandbox]:
    async with ehr_sandbox(tmp_path / "ehr") as running:
        yield running


async def importable(box: RunningSandbox, patient: str) -> set[tuple[str, str, str]]:
    """(type, id, version) of every resource of the patient a back-fill must import."""
    found: set[tuple[str, str, str]] = set()
    for resource_type in IMPORTED_TYPES:
        response = await box.admin.get(
            f"/fhir/{resource_type}", params={"patient": patient, "_count": "500"}
        )
        for entry in response.json().get("entry", []):
            mapped = map_history(entry["resource"])
            if isinstance(mapped, ImportedEntry):
                found.add((mapped.resource_type, mapped.fhir_id, mapped.version_id))
    return found


def entries(batches: list[Published]) -> Counter[tuple[str, str, str]]:
    """Imported entries over distinct events (a relay re-send keeps its ce_id)."""
    unique = {b.event_id: b for b in batches}
    return Counter(
        (e["resource_type"], e["fhir_id"], e["version_id"])
        for batch in unique.values()
        for e in batch.data["entries"]
    )


def batch_numbers(batches: list[Published]) -> list[int]:
    unique = {b.event_id: b for b in batches}
    return sorted(b.data["batch_number"] for b in unique.values())


async def progress(settings: Settings, patient_id: str) -> dict[str, Any] | None:
    async with ops_client(settings) as client:
        response = await client.get(f"/ops/backfill/{patient_id}")
    return response.json() if response.status_code == 200 else None


async def finished(settings: Settings, patient_id: str, timeout: float) -> dict[str, Any]:
    """The patient's back-fill once it is done."""
    done: dict[str, Any] = {}

    async def is_done() -> bool:
        state = await progress(settings, patient_id)
        if state is not None and state["state"] == "done":
            done.update(state)
            return True
        return False

    await eventually(is_done, timeout=timeout, interval=0.1)
    return done


def _settings(
    box: RunningSandbox,
    database_url: str,
    kafka_bootstrap: str,
    unique_prefix: str,
    idempotence: bool,
    **overrides: Any,
) -> Settings:
    values: dict[str, Any] = {"backfill_page_size": 3, "backfill_page_interval_s": 0.2}
    return connector_settings(
        box,
        database_url=database_url,
        bootstrap=kafka_bootstrap,
        prefix=unique_prefix,
        idempotence=idempotence,
        **(values | overrides),
    )


async def test_linking_imports_the_history_in_batches_with_progress(
    box: RunningSandbox,
    database_url: str,
    kafka_bootstrap: str,
    kafka_enable_idempotence: bool,
    unique_prefix: str,
) -> None:
    await ensure_topics(kafka_bootstrap, unique_prefix)
    settings = _settings(
        box, database_url, kafka_bootstrap, unique_prefix, kafka_enable_idempotence,
        inbound_enabled=False,
    )  # fmt: skip
    expected = await importable(box, "demo-alice")
    assert len(expected) > 15
    async with running_connector(settings):
        await link(kafka_bootstrap, unique_prefix, ALICE, "demo-alice", backfill=True)
        seen: list[dict[str, Any]] = []

        async def done() -> bool:
            state = await progress(settings, ALICE)
            if state is not None:
                seen.append(state)
            return state is not None and state["state"] == "done"

        await eventually(done, timeout=120, interval=0.1)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{settings.http_port}") as client:
            assert (await client.get(f"/ops/backfill/{ALICE}")).status_code == 401
            again = await client.post(f"/ops/backfill/{ALICE}", headers=OPS)
            assert again.status_code == 202  # a new import once the first one is done
            assert (await client.post(f"/ops/backfill/{ALICE}", headers=OPS)).status_code == 409
            assert (await client.get("/ops/backfill/nobody", headers=OPS)).status_code == 404

        # The loop's gauges: every state has its series, counted in one statement.
        def gauges() -> dict[str, float | None]:
            return {
                state: REGISTRY.get_sample_value("backfills", {"state": state})
                for state in ("pending", "running", "done", "failed")
            }

        async def second_done() -> bool:
            return gauges() == {"pending": 0.0, "running": 0.0, "done": 2.0, "failed": 0.0}

        await eventually(second_done, timeout=120, interval=0.1)

    final = seen[-1]
    assert final["total"] >= len(expected)
    assert final["done"] == final["total"]
    assert any(s["state"] == "running" and s["done"] < (s["total"] or 0) for s in seen), (
        "progress was visible while it ran"
    )
    batches = await read_events(
        kafka_bootstrap,
        unique_prefix + "record.imported",
        lambda bs: any(
            b.data["last_batch"] and b.data["backfill_id"] == final["backfill_id"] for b in bs
        ),
    )
    first = [b for b in batches if b.data["backfill_id"] == final["backfill_id"]]
    assert all(b.key == ALICE for b in first)
    numbers = batch_numbers(first)
    assert numbers == list(range(1, final["batches_published"] + 1))
    assert [b.data["last_batch"] for b in sorted(first, key=lambda b: b.data["batch_number"])][
        -1
    ] is True
    assert sum(b.data["last_batch"] for b in {b.event_id: b for b in first}.values()) == 1
    assert all(len(b.data["entries"]) <= 3 for b in first)
    imported = entries(first)
    assert set(imported) == expected
    assert all(n == 1 for n in imported.values())
    kinds = {e["kind"] for b in first for e in b.data["entries"]}
    assert {"condition", "medication", "allergy", "immunization", "lab-result", "document"} <= kinds


async def test_a_backfill_killed_midway_resumes_without_loss_or_doubles(
    box: RunningSandbox,
    tmp_path: Path,
    database_url: str,
    kafka_bootstrap: str,
    kafka_enable_idempotence: bool,
    unique_prefix: str,
) -> None:
    await ensure_topics(kafka_bootstrap, unique_prefix)
    settings = _settings(
        box, database_url, kafka_bootstrap, unique_prefix, kafka_enable_idempotence,
        inbound_enabled=False, backfill_page_size=2, backfill_page_interval_s=0.4,
        backfill_lease_s=2.0,
    )  # fmt: skip
    expected = await importable(box, "demo-alice")
    process = ConnectorProcess(settings, tmp_path / "connector.log")
    await process.start()
    try:
        await link(kafka_bootstrap, unique_prefix, ALICE, "demo-alice", backfill=True)

        async def midway() -> bool:
            state = await progress(settings, ALICE)
            return state is not None and state["batches_published"] >= 3

        await eventually(midway, timeout=120, interval=0.05)
        await process.kill()
        killed_at = await _progress_from_db(settings)
        assert killed_at["state"] == "running", killed_at
        await process.start()

        final = await finished(settings, ALICE, timeout=120)
    finally:
        await process.stop()
    batches = await read_events(
        kafka_bootstrap,
        unique_prefix + "record.imported",
        lambda bs: any(b.data["last_batch"] for b in bs),
    )
    imported = entries(batches)
    assert set(imported) == expected, "nothing lost"
    assert all(n == 1 for n in imported.values()), "nothing doubled"
    assert batch_numbers(batches) == list(range(1, final["batches_published"] + 1))
    assert final["batches_published"] > killed_at["batches_published"]


async def _progress_from_db(settings: Settings) -> dict[str, Any]:
    from ehr_connector.inbound import store
    from servicekit.db import Database

    db = Database(settings.database_url)
    try:
        async with db.sessions() as session:
            job = await store.latest_backfill(session, ALICE)
            assert job is not None
            return {"state": job.state, "batches_published": job.batches_published}
    finally:
        await db.dispose()


async def test_live_events_are_published_before_waiting_backfill_batches(
    box: RunningSandbox,
    database_url: str,
    kafka_bootstrap: str,
    kafka_enable_idempotence: bool,
    unique_prefix: str,
) -> None:
    await ensure_topics(kafka_bootstrap, unique_prefix)
    # No relay: batches pile up in the outbox, as behind a slow broker or a big import.
    settings = _settings(
        box, database_url, kafka_bootstrap, unique_prefix, kafka_enable_idempotence,
        relay_enabled=False, backfill_page_interval_s=0.5,
    )  # fmt: skip
    async with running_connector(settings) as service:
        await wait_subscriptions_active(settings)
        await link(kafka_bootstrap, unique_prefix, ALICE, "demo-alice", backfill=True)

        async def started() -> bool:
            state = await progress(settings, ALICE)
            return state is not None and state["batches_published"] >= 2

        await eventually(started, timeout=120, interval=0.1)
        report_id, _ = last_of(
            await simulate(box, "lab-result", patient="demo-alice"), "DiagnosticReport"
        )

        async def queued() -> bool:
            async with service.db.sessions() as session:
                rows = (await session.execute(select(OutboxRow.topic))).scalars().all()
            return any(t.endswith("lab.resulted") for t in rows)

        await eventually(queued, timeout=60, interval=0.1)

        await finished(settings, ALICE, timeout=120)
        relay = OutboxRelay(
            service.db,
            settings.model_copy(update={"outbox_batch_size": 1}),
            cipher=service.outbox.cipher,  # the connector seals its outbox
        )
        while await relay.publish_batch():
            pass
        await relay._reset_producer()
        async with service.db.sessions() as session:
            rows = (
                await session.execute(
                    select(OutboxRow.topic, OutboxRow.created_at, OutboxRow.sent_at).order_by(
                        OutboxRow.sent_at, OutboxRow.id
                    )
                )
            ).all()
    order = [topic.removeprefix(unique_prefix) for topic, _c, _s in rows]
    live = order.index("lab.resulted")
    live_created = next(c for t, c, _s in rows if t.endswith("lab.resulted"))
    older_batches = [
        i for i, (t, c, _s) in enumerate(rows) if t.endswith("record.imported") and c < live_created
    ]
    assert older_batches, "back-fill batches were waiting when the live event came"
    assert live < min(older_batches), order
    events = await read_events(
        kafka_bootstrap,
        unique_prefix + "lab.resulted",
        lambda es: any(e.data["report_fhir_id"] == report_id for e in es),
    )
    assert [e.data["report_fhir_id"] for e in events] == [report_id]


async def test_a_backfill_rests_between_pages_while_live_notifications_arrive(
    box: RunningSandbox,
    database_url: str,
    kafka_bootstrap: str,
    kafka_enable_idempotence: bool,
    unique_prefix: str,
) -> None:
    await ensure_topics(kafka_bootstrap, unique_prefix)
    # A quarter of the time while live traffic is recent (a window that spans the run).
    settings = _settings(
        box, database_url, kafka_bootstrap, unique_prefix, kafka_enable_idempotence,
        backfill_page_interval_s=0.0, backfill_share_under_live=0.25,
        backfill_live_window_s=600.0,
    )  # fmt: skip
    expected = await importable(box, "demo-alice")
    yielded_before = REGISTRY.get_sample_value("backfill_yielded_seconds_total") or 0.0
    async with running_connector(settings):
        await wait_subscriptions_active(settings)
        received_before = _event_notifications()
        await simulate(box, "lab-result", patient="demo-bob")  # another patient's live result

        async def heard() -> bool:
            return _event_notifications() > received_before

        await eventually(heard, timeout=60, interval=0.05)
        await link(kafka_bootstrap, unique_prefix, ALICE, "demo-alice", backfill=True)

        final = await finished(settings, ALICE, timeout=180)
    yielded = (REGISTRY.get_sample_value("backfill_yielded_seconds_total") or 0.0) - yielded_before
    assert yielded > 0, "the back-fill rested for the live traffic"
    # Resting loses nothing: every entry of the history, once.
    batches = await read_events(
        kafka_bootstrap,
        unique_prefix + "record.imported",
        lambda bs: any(
            b.data["last_batch"] and b.data["backfill_id"] == final["backfill_id"] for b in bs
        ),
    )
    imported = entries([b for b in batches if b.data["backfill_id"] == final["backfill_id"]])
    assert set(imported) == expected
    assert all(n == 1 for n in imported.values())


def _event_notifications() -> float:
    labels = {"type": "event-notification"}
    return REGISTRY.get_sample_value("inbound_notifications_total", labels) or 0.0
