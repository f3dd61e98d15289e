"""Each inbound topic end to end: a change made by the sandbox's clinician simulator reaches
the connector as a signed rest-hook notification and comes out on its topic exactly once.
Also: an echo (a version written with the portal's origin tag) publishes nothing, and a
change about a patient not linked to the portal publishes nothing."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from devstack.topics import ensure_topics
from ehr_connector.context import connector_for
from ehr_connector.ehr.errors import EhrRejected
from ehr_connector.ehr.fhir_client import FhirClient
from ehr_connector.ehr.port import SearchPage, SearchParams, Versioned
from ehr_connector.outbound.domain.tags import ORIGIN_TAG
from ehr_connector.settings import Settings
from ehr_sandbox.testing.http import RunningSandbox
from servicekit.app import Service
from servicekit.testing import eventually

from .inbound_support import (
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

pytestmark = [pytest.mark.integration]
ALICE = "pt-alice"


@pytest.fixture
async def box(tmp_path: Path) -> AsyncIterator[RunningSandbox]:
    async with ehr_sandbox(tmp_path / "ehr") as running:
        yield running


@pytest.fixture
async def connector(
    box: RunningSandbox,
    database_url: str,
    kafka_bootstrap: str,
    kafka_enable_idempotence: bool,
    unique_prefix: str,
    request: pytest.FixtureRequest,
) -> AsyncIterator[tuple[Service, Settings]]:
    await ensure_topics(kafka_bootstrap, unique_prefix)
    overrides: dict[str, Any] = dict(getattr(request, "param", {}))
    wrap_ehr = overrides.pop("wrap_ehr", None)
    settings = connector_settings(
        box,
        database_url=database_url,
        bootstrap=kafka_bootstrap,
        prefix=unique_prefix,
        idempotence=kafka_enable_idempotence,
        **overrides,
    )
    async with running_connector(settings, wrap_ehr=wrap_ehr) as service:
        await wait_subscriptions_active(settings)
        await link(kafka_bootstrap, unique_prefix, ALICE, "demo-alice", backfill=False)
        await wait_linked(settings, ALICE)
        yield service, settings


class CountsReads:
    """The connector's EHR client, noting every read and search it makes."""

    def __init__(self, inner: FhirClient) -> None:
        self._inner = inner
        self.reads: list[tuple[str, str]] = []
        self.searches: list[tuple[str, SearchParams]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def read(self, resource_type: str, fhir_id: str) -> Versioned:
        self.reads.append((resource_type, fhir_id))
        return await self._inner.read(resource_type, fhir_id)

    async def search(
        self, resource_type: str, params: SearchParams, *, count: int | None = None
    ) -> SearchPage:
        self.searches.append((resource_type, params))
        return await self._inner.search(resource_type, params, count=count)


class RefusesInclude(CountsReads):
    """An EHR that answers 400 to any `_include` (as a server that does not support it)."""

    async def search(
        self, resource_type: str, params: SearchParams, *, count: int | None = None
    ) -> SearchPage:
        pairs = list(params.items() if isinstance(params, Mapping) else params)
        if any(name == "_include" for name, _ in pairs):
            self.searches.append((resource_type, params))
            raise EhrRejected("_include is not supported", status=400, interaction="search")
        return await super().search(resource_type, params, count=count)


def _counting(connector: tuple[Service, Settings]) -> CountsReads:
    """The running connector's EHR client, as the test wrapped it."""
    client = connector_for(connector[0].deps).ehr
    assert isinstance(client, CountsReads)
    return client


async def _a_panel_published(
    box: RunningSandbox, kafka_bootstrap: str, unique_prefix: str
) -> tuple[str, list[str]]:
    """A panel resulted for Alice and published with each of its results; returns the
    report's id and the results' ids."""
    written = await simulate(box, "lab-result", patient="demo-alice", panel="cbc")
    report_id, _ = last_of(written, "DiagnosticReport")
    labs = await read_events(
        kafka_bootstrap,
        unique_prefix + "lab.resulted",
        lambda es: bool(_only(es, "report_fhir_id", report_id)),
    )
    [lab] = _only(labs, "report_fhir_id", report_id)
    results = [line["observation_fhir_id"] for line in lab.data["observations"]]
    kinds_and_ids = [w["reference"].partition("/") for w in written]
    written_results = [fhir_id for kind, _, fhir_id in kinds_and_ids if kind == "Observation"]
    assert len(written_results) > 1 and sorted(results) == sorted(written_results)
    return report_id, written_results


@pytest.mark.parametrize("connector", [{"wrap_ehr": CountsReads}], indirect=True)
async def test_a_report_and_its_results_are_read_in_one_search(
    box: RunningSandbox,
    connector: tuple[Service, Settings],
    kafka_bootstrap: str,
    unique_prefix: str,
) -> None:
    client = _counting(connector)
    report_id, _ = await _a_panel_published(box, kafka_bootstrap, unique_prefix)
    # One search by _id that includes the results: no read of the report or of any result.
    assert not [r for r in client.reads if r[0] in ("DiagnosticReport", "Observation")]
    assert not [s for s in client.searches if s[0] == "Observation"]
    [(_, params)] = [s for s in client.searches if s[0] == "DiagnosticReport"]
    assert list(params) == [("_id", report_id), ("_include", "DiagnosticReport:result")]


async def _notification_delays(settings: Settings, topic: str) -> tuple[float, float]:
    """The connector's `inbound_notification_delay_seconds` of a topic: count and sum."""
    async with ops_client(settings) as client:
        response = await client.get("/metrics")
    response.raise_for_status()
    found = {"count": 0.0, "sum": 0.0}
    for family in text_string_to_metric_families(response.text):
        if family.name != "inbound_notification_delay_seconds":
            continue
        for sample in family.samples:
            kind = sample.name.rpartition("_")[2]
            if sample.labels.get("topic") == topic and kind in found:
                found[kind] += sample.value
    return found["count"], found["sum"]


async def test_the_ehr_share_of_each_event_is_measured(
    box: RunningSandbox,
    connector: tuple[Service, Settings],
    kafka_bootstrap: str,
    unique_prefix: str,
) -> None:
    settings = connector[1]
    topic = settings.inbound_topics["DiagnosticReport"]
    count, total = await _notification_delays(settings, topic)
    started = time.monotonic()
    await _a_panel_published(box, kafka_bootstrap, unique_prefix)
    await _a_panel_published(box, kafka_bootstrap, unique_prefix)
    waited = time.monotonic() - started
    after_count, after_total = await _notification_delays(settings, topic)
    # Each report's event, from its time at the EHR to its notification reaching us: within
    # the time the test waited for both to be published.
    assert after_count - count >= 2
    assert 0 < after_total - total < waited


@pytest.mark.parametrize("connector", [{"wrap_ehr": RefusesInclude}], indirect=True)
async def test_an_ehr_that_refuses_include_gets_a_read_and_one_search_for_the_results(
    box: RunningSandbox,
    connector: tuple[Service, Settings],
    kafka_bootstrap: str,
    unique_prefix: str,
) -> None:
    client = _counting(connector)
    first, first_results = await _a_panel_published(box, kafka_bootstrap, unique_prefix)
    second, second_results = await _a_panel_published(box, kafka_bootstrap, unique_prefix)
    assert ("DiagnosticReport", first) in client.reads
    assert ("DiagnosticReport", second) in client.reads
    # Asked once; after the refusal the connector reads (and searches the results by _id).
    assert len([s for s in client.searches if s[0] == "DiagnosticReport"]) == 1
    result_searches = [dict(p)["_id"] for t, p in client.searches if t == "Observation"]
    assert sorted(result_searches[-1].split(",")) == sorted(second_results)
    assert sorted(result_searches[-2].split(",")) == sorted(first_results)


def _only(events: list[Any], field: str, value: str) -> list[Any]:
    return [e for e in events if e.data.get(field) == value]


@pytest.mark.parametrize(
    "connector", [{}, {"inbound_payload": "full-resource"}], indirect=True, ids=["id-only", "full"]
)
async def test_each_topic_publishes_each_change_once(
    box: RunningSandbox,
    connector: tuple[Service, Settings],
    kafka_bootstrap: str,
    unique_prefix: str,
) -> None:
    report_id, report_version = last_of(
        await simulate(box, "lab-result", patient="demo-alice", panel="lipid", abnormal=True),
        "DiagnosticReport",
    )
    med_id, med_version = last_of(
        await simulate(box, "medication-change", patient="demo-alice", action="dose-change"),
        "MedicationRequest",
    )
    message_id, _ = last_of(
        await simulate(box, "message-reply", patient="demo-alice", text="Your results are fine."),
        "Communication",
    )
    cancelled = await simulate(box, "appointment-cancel", patient="demo-alice")
    appointment_id, appointment_version = last_of(cancelled, "Appointment")
    slot_id, slot_version = last_of(cancelled, "Slot")

    labs = await read_events(
        kafka_bootstrap,
        unique_prefix + "lab.resulted",
        lambda es: bool(_only(es, "report_fhir_id", report_id)),
    )
    meds = await read_events(
        kafka_bootstrap,
        unique_prefix + "medication.changed",
        lambda es: bool(_only(es, "medication_request_fhir_id", med_id)),
    )
    messages = await read_events(
        kafka_bootstrap,
        unique_prefix + "message.received",
        lambda es: bool(_only(es, "communication_fhir_id", message_id)),
    )
    appointments = await read_events(
        kafka_bootstrap,
        unique_prefix + "appointment.updated",
        lambda es: bool(_only(es, "appointment_fhir_id", appointment_id)),
    )
    slots = await read_events(
        kafka_bootstrap,
        unique_prefix + "slot.updated",
        lambda es: bool(_only(es, "slot_fhir_id", slot_id)),
    )

    [lab] = _only(labs, "report_fhir_id", report_id)
    assert lab.key == ALICE and lab.data["patient_id"] == ALICE
    assert lab.data["status"] == "final"
    assert lab.data["source"]["version_id"] == report_version
    assert lab.data["performer"] == ["Riverside Clinical Laboratory"]
    lines = lab.data["observations"]
    assert len(lines) == 4  # the lipid panel's four analytes
    assert all(line["value_quantity"]["unit"] for line in lines)
    assert all(line["reference_ranges"] for line in lines)
    assert any(line["interpretation"] for line in lines)  # abnormal=True flags one

    [med] = _only(meds, "medication_request_fhir_id", med_id)
    assert med.key == ALICE and med.data["source"]["version_id"] == med_version
    assert "dose changed" in (med.data["dosage_text"] or "")

    [message] = _only(messages, "communication_fhir_id", message_id)
    reply = (await box.admin.get(f"/fhir/Communication/{message_id}")).json()
    assert message.data["body"] == "Your results are fine."
    assert message.data["sender_display"] == "Dr. Grace Adams"
    assert message.data["thread_fhir_id"] == reply["partOf"][0]["reference"].split("/")[-1]
    assert (
        message.data["in_reply_to_fhir_id"] == reply["inResponseTo"][0]["reference"].split("/")[-1]
    )

    [appointment] = _only(appointments, "appointment_fhir_id", appointment_id)
    assert appointment.data["status"] == "cancelled"
    assert appointment.data["source"]["version_id"] == appointment_version
    assert slot_id in appointment.data["slot_fhir_ids"]

    [slot] = _only(slots, "slot_fhir_id", slot_id)
    assert slot.data["status"] == "free"
    assert slot.data["source"]["version_id"] == slot_version
    assert slot.key == f"schedule:{slot.data['schedule_fhir_id']}"
    assert slot.data["practitioner_fhir_id"] == "dr-adams"

    # Late duplicates (none expected, but the test waits for them) change nothing.
    await settle(3)
    for topic in ("lab.resulted", "medication.changed", "message.received"):
        events = await read_events(kafka_bootstrap, unique_prefix + topic, lambda es: bool(es))
        assert all(n == 1 for n in by_source(events).values()), (topic, by_source(events))


async def test_an_echo_and_an_unlinked_patient_publish_nothing(
    box: RunningSandbox,
    connector: tuple[Service, Settings],
    kafka_bootstrap: str,
    unique_prefix: str,
) -> None:
    _, settings = connector

    def message(text: str, patient: str, tags: list[dict[str, str]]) -> dict[str, Any]:
        return {
            "resourceType": "Communication",
            "meta": {"tag": tags},
            "status": "completed",
            "subject": {"reference": f"Patient/{patient}"},
            "recipient": [{"reference": f"Patient/{patient}"}],
            "sender": {"reference": "Practitioner/dr-adams"},
            "sent": "2026-11-20T08:00:00Z",
            "payload": [{"contentString": text}],
        }

    # Written with the portal's origin tag: the connector's own write coming back.
    echo = await box.admin.post(
        "/fhir/Communication", json=message("echo", "demo-alice", [ORIGIN_TAG])
    )
    echo.raise_for_status()
    # demo-bob is not linked to the portal: nobody would receive it.
    unlinked = await box.admin.post("/fhir/Communication", json=message("bob", "demo-bob", []))
    unlinked.raise_for_status()
    # The control, written last: once it is out, the two before it were handled.
    control = await box.admin.post("/fhir/Communication", json=message("control", "demo-alice", []))
    control.raise_for_status()
    control_id = control.json()["id"]

    events = await read_events(
        kafka_bootstrap,
        unique_prefix + "message.received",
        lambda es: bool(_only(es, "communication_fhir_id", control_id)),
    )
    await settle(2)
    events = await read_events(
        kafka_bootstrap, unique_prefix + "message.received", lambda es: bool(es)
    )
    published = {e.data["communication_fhir_id"] for e in events}
    assert control_id in published
    assert echo.json()["id"] not in published
    assert unlinked.json()["id"] not in published

    async with ops_client(settings) as client:
        metrics = (await client.get("/metrics")).text
    assert 'inbound_events_total{outcome="echo",resource_type="Communication"} 1.0' in metrics
    assert 'inbound_unlinked_patient_total{resource_type="Communication"} 1.0' in metrics


async def _echoes(settings: Settings) -> float:
    """The connector's count of Communication echoes (the registry outlives one test)."""
    async with ops_client(settings) as client:
        response = await client.get("/metrics")
    response.raise_for_status()
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            if sample.name == "inbound_events_total" and sample.labels == {
                "outcome": "echo",
                "resource_type": "Communication",
            }:
                return sample.value
    return 0.0


@pytest.mark.parametrize("connector", [{"wrap_ehr": CountsReads}], indirect=True)
async def test_our_own_writes_come_back_as_echoes_without_a_read(
    box: RunningSandbox,
    connector: tuple[Service, Settings],
    kafka_bootstrap: str,
    unique_prefix: str,
) -> None:
    """The versions the connector's client wrote are echoes on sight: the EHR is not asked
    for them again (a booking's four notifications cost four reads before)."""
    service, settings = connector
    client = _counting(connector)
    ehr = connector_for(service.deps).ehr
    ours = {
        "resourceType": "Communication",
        "meta": {"tag": [ORIGIN_TAG]},
        "status": "completed",
        "subject": {"reference": "Patient/demo-alice"},
        "recipient": [{"reference": "Patient/demo-alice"}],
        "sender": {"reference": "Practitioner/dr-adams"},
        "sent": "2026-11-20T08:00:00Z",
        "payload": [{"contentString": "from the portal"}],
    }
    before = await _echoes(settings)
    created = await ehr.create(ours)
    another = await ehr.create({**ours, "payload": [{"contentString": "and again"}]})
    # The control, a clinician's message written last: once it is out, ours were handled.
    control = await box.admin.post(
        "/fhir/Communication",
        json={**ours, "meta": {}, "payload": [{"contentString": "control"}]},
    )
    control.raise_for_status()
    control_id = control.json()["id"]
    await read_events(
        kafka_bootstrap,
        unique_prefix + "message.received",
        lambda es: bool(_only(es, "communication_fhir_id", control_id)),
    )
    events = await read_events(
        kafka_bootstrap, unique_prefix + "message.received", lambda es: bool(es)
    )
    assert not {created.id, another.id} & {e.data["communication_fhir_id"] for e in events}

    async def both_echoes() -> bool:
        return await _echoes(settings) == before + 2

    await eventually(both_echoes, timeout=30)
    for fhir_id in (created.id, another.id):
        assert ("Communication", fhir_id) not in client.reads
        assert not [s for s in client.searches if fhir_id in str(s[1])]
    # The control was read as usual.
    assert ("Communication", control_id) in client.reads or [
        s for s in client.searches if control_id in str(s[1])
    ]
