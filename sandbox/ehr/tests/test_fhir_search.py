"""Search: paging, each parameter family, _include/_revinclude, _lastUpdated, _sort, $everything."""

from __future__ import annotations

import asyncio
from typing import Any

from ehr_sandbox.testing import FHIR_JSON, Sandbox, patient

LOINC = "http://loinc.org"


def _observation(pid: str, code: str, when: str, **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "status": extra.pop("status", "final"),
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                        "code": extra.pop("category", "laboratory"),
                    }
                ]
            }
        ],
        "code": {"coding": [{"system": LOINC, "code": code}]},
        "subject": {"reference": f"Patient/{pid}"},
        "effectiveDateTime": when,
        "valueQuantity": {"value": 1, "unit": "mg/dL", "system": "http://unitsofmeasure.org"},
        **extra,
    }


async def _all_pages(sandbox: Sandbox, first: dict[str, Any]) -> list[str]:
    ids = sandbox.ids(first)
    url = sandbox.link(first, "next")
    pages = 1
    while url:
        page = (await sandbox.follow(url)).json()
        ids += sandbox.ids(page)
        url = sandbox.link(page, "next")
        pages += 1
        assert pages < 50
    return ids


async def test_paging_follows_next_links_to_the_end(sandbox: Sandbox) -> None:
    created = [(await sandbox.create(patient(family=f"Page{n:02d}")))["id"] for n in range(23)]
    first = await sandbox.search("/fhir/Patient", _count=5)
    assert first["type"] == "searchset"
    assert first["total"] == 23
    assert len(first["entry"]) == 5
    assert sandbox.link(first, "previous") is None
    assert sandbox.link(first, "self") is not None
    ids = await _all_pages(sandbox, first)
    assert ids == created  # default order: oldest change first, no duplicates, none missing
    last = (await sandbox.follow(sandbox.link(first, "last") or "")).json()
    assert len(last["entry"]) == 3
    previous = (await sandbox.follow(sandbox.link(last, "previous") or "")).json()
    assert sandbox.ids(previous) == created[15:20]


async def test_paging_keeps_the_criteria(sandbox: Sandbox) -> None:
    for n in range(6):
        await sandbox.create(patient(family="Keep" if n % 2 else "Drop", given=f"G{n}"))
    first = await sandbox.search("/fhir/Patient", family="keep", _count=1)
    assert first["total"] == 3
    assert len(await _all_pages(sandbox, first)) == 3


async def test_entries_carry_full_url_and_mode(sandbox: Sandbox) -> None:
    created = await sandbox.create(patient())
    bundle = await sandbox.search("/fhir/Patient")
    entry = bundle["entry"][0]
    assert entry["fullUrl"] == f"{sandbox.settings.fhir_base}/Patient/{created['id']}"
    assert entry["search"] == {"mode": "match"}


async def test_id_and_identifier_and_name(sandbox: Sandbox) -> None:
    ann = await sandbox.create(
        patient(
            family="Müller",
            given="Ann",
            identifier=[{"system": "urn:test:mrn", "value": "M-1"}],
            birthDate="1980-05-17",
            gender="female",
        )
    )
    bob = await sandbox.create(
        patient(family="Miller", given="Bob", identifier=[{"system": "urn:other", "value": "M-1"}])
    )
    assert sandbox.ids(await sandbox.search("/fhir/Patient", _id=ann["id"])) == [ann["id"]]
    both = await sandbox.search("/fhir/Patient", _id=f"{ann['id']},{bob['id']}")
    assert both["total"] == 2
    by_system = await sandbox.search("/fhir/Patient", identifier="urn:test:mrn|M-1")
    assert sandbox.ids(by_system) == [ann["id"]]
    by_value = await sandbox.search("/fhir/Patient", identifier="M-1")
    assert by_value["total"] == 2
    assert (await sandbox.search("/fhir/Patient", identifier="|M-1"))["total"] == 0
    assert (await sandbox.search("/fhir/Patient", identifier="urn:other|"))["total"] == 1
    # Names: starts-with, case- and accent-insensitive; :exact and :contains modifiers.
    assert sandbox.ids(await sandbox.search("/fhir/Patient", name="mul")) == [ann["id"]]
    assert (await sandbox.search("/fhir/Patient", name="M"))["total"] == 2
    assert (await sandbox.search("/fhir/Patient", **{"name:exact": "Müller"}))["total"] == 1
    assert (await sandbox.search("/fhir/Patient", **{"name:exact": "müller"}))["total"] == 0
    assert (await sandbox.search("/fhir/Patient", **{"name:contains": "ille"}))["total"] == 1
    assert (await sandbox.search("/fhir/Patient", given="bo"))["total"] == 1
    assert (await sandbox.search("/fhir/Patient", birthdate="1980"))["total"] == 1
    assert (await sandbox.search("/fhir/Patient", birthdate="1980-05-17"))["total"] == 1
    assert (await sandbox.search("/fhir/Patient", birthdate="lt1980-05-17"))["total"] == 0
    assert (await sandbox.search("/fhir/Patient", birthdate="ge1980-05"))["total"] == 1
    assert (await sandbox.search("/fhir/Patient", gender="female"))["total"] == 1
    assert (await sandbox.search("/fhir/Patient", **{"gender:missing": "true"}))["total"] == 1


async def test_practitioner_name_and_identifier(sandbox: Sandbox) -> None:
    doc = await sandbox.create(
        {
            "resourceType": "Practitioner",
            "identifier": [{"system": "http://hl7.org/fhir/sid/us-npi", "value": "1234567893"}],
            "name": [{"family": "Zhivago", "given": ["Yuri"], "prefix": ["Dr."]}],
        }
    )
    found = await sandbox.search("/fhir/Practitioner", name="zhiv")
    assert sandbox.ids(found) == [doc["id"]]
    npi = await sandbox.search(
        "/fhir/Practitioner", identifier="http://hl7.org/fhir/sid/us-npi|1234567893"
    )
    assert sandbox.ids(npi) == [doc["id"]]


async def test_patient_subject_code_category_status_date(sandbox: Sandbox) -> None:
    pid = (await sandbox.put(patient(id="p1")))["id"]
    other = (await sandbox.put(patient(id="p2")))["id"]
    a = await sandbox.create(_observation(pid, "2345-7", "2024-01-10T09:00:00Z"))
    b = await sandbox.create(
        _observation(pid, "718-7", "2024-03-05", status="preliminary", category="vital-signs")
    )
    c = await sandbox.create(_observation(other, "2345-7", "2024-02-01T12:00:00+02:00"))
    assert sandbox.ids(await sandbox.search("/fhir/Observation", patient=other)) == [c["id"]]
    search = sandbox.search
    assert set(sandbox.ids(await search("/fhir/Observation", patient=pid))) == {a["id"], b["id"]}
    assert (await search("/fhir/Observation", patient=f"Patient/{pid}"))["total"] == 2
    assert (await search("/fhir/Observation", subject=f"Patient/{pid}"))["total"] == 2
    assert (await search("/fhir/Observation", **{"subject:Patient": pid}))["total"] == 2
    full = f"{sandbox.settings.fhir_base}/Patient/{pid}"
    assert (await search("/fhir/Observation", subject=full))["total"] == 2
    assert (await search("/fhir/Observation", code=f"{LOINC}|2345-7"))["total"] == 2
    assert (await search("/fhir/Observation", code="718-7"))["total"] == 1
    assert (await search("/fhir/Observation", code="2345-7,718-7"))["total"] == 3
    assert (await search("/fhir/Observation", **{"code:not": "2345-7"}))["total"] == 1
    assert (await search("/fhir/Observation", category="vital-signs"))["total"] == 1
    assert (await search("/fhir/Observation", status="final"))["total"] == 2
    assert (await search("/fhir/Observation", patient=pid, code="2345-7"))["total"] == 1
    # Dates: ranges and prefixes on effective[x].
    assert sandbox.ids(await search("/fhir/Observation", date="2024-01")) == [a["id"]]
    assert (await search("/fhir/Observation", date="ge2024-02-01"))["total"] == 2
    assert (await search("/fhir/Observation", date="gt2024-02-01"))["total"] == 1
    assert (await search("/fhir/Observation", date="lt2024-02-01"))["total"] == 1
    assert (await search("/fhir/Observation", date="lt2024-02-02"))["total"] == 2  # c: 10:00Z
    assert (await search("/fhir/Observation", date="le2024-01-10"))["total"] == 1
    assert (await search("/fhir/Observation", date="eq2024-03-05"))["total"] == 1
    assert (await search("/fhir/Observation", date="ne2024-03-05"))["total"] == 2
    assert (await search("/fhir/Observation", date="sa2024-02-15"))["total"] == 1
    assert (await search("/fhir/Observation", date="eb2024-01-31"))["total"] == 1
    assert (await search("/fhir/Observation", date=["ge2024-01-01", "lt2024-03-01"]))["total"] == 2
    bad = await sandbox.client.get("/fhir/Observation", params={"date": "yesterday"})
    assert bad.status_code == 400
    assert "date" in sandbox.diagnostics(sandbox.outcome(bad))


async def test_observation_based_on(sandbox: Sandbox) -> None:
    obs = await sandbox.create(
        _observation("p1", "2345-7", "2024-01-01", basedOn=[{"reference": "ServiceRequest/sr1"}])
    )
    found = await sandbox.search("/fhir/Observation", **{"based-on": "ServiceRequest/sr1"})
    assert sandbox.ids(found) == [obs["id"]]


async def test_scheduling_params(sandbox: Sandbox) -> None:
    schedule = await sandbox.put(
        {
            "resourceType": "Schedule",
            "id": "s1",
            "actor": [{"reference": "Practitioner/doc1"}],
        }
    )
    slots = []
    for hour, status in ((9, "free"), (10, "busy"), (11, "free")):
        slots.append(
            await sandbox.create(
                {
                    "resourceType": "Slot",
                    "schedule": {"reference": "Schedule/s1"},
                    "status": status,
                    "start": f"2030-01-07T{hour:02d}:00:00Z",
                    "end": f"2030-01-07T{hour:02d}:20:00Z",
                }
            )
        )
    search = sandbox.search
    assert sandbox.ids(await search("/fhir/Schedule", actor="Practitioner/doc1")) == [
        schedule["id"]
    ]
    assert (await search("/fhir/Slot", schedule="Schedule/s1"))["total"] == 3
    assert (await search("/fhir/Slot", schedule="s1", status="free"))["total"] == 2
    morning = await search("/fhir/Slot", start=["ge2030-01-07T09:30:00Z", "lt2030-01-07T12:00:00Z"])
    assert sandbox.ids(morning) == [slots[1]["id"], slots[2]["id"]]
    appointment = await sandbox.create(
        {
            "resourceType": "Appointment",
            "status": "booked",
            "start": "2030-01-07T10:00:00Z",
            "end": "2030-01-07T10:20:00Z",
            "slot": [{"reference": f"Slot/{slots[1]['id']}"}],
            "participant": [
                {"actor": {"reference": "Patient/p1"}, "status": "accepted"},
                {"actor": {"reference": "Practitioner/doc1"}, "status": "accepted"},
            ],
        }
    )
    assert sandbox.ids(await search("/fhir/Appointment", patient="p1")) == [appointment["id"]]
    assert (await search("/fhir/Appointment", practitioner="doc1"))["total"] == 1
    assert (await search("/fhir/Appointment", patient="doc1"))["total"] == 0
    assert (await search("/fhir/Appointment", slot=f"Slot/{slots[1]['id']}"))["total"] == 1
    assert (await search("/fhir/Appointment", status="booked", date="2030-01-07"))["total"] == 1
    assert (await search("/fhir/Appointment", date="2030-01-08"))["total"] == 0


async def test_communication_task_and_questionnaire_response_params(sandbox: Sandbox) -> None:
    root = await sandbox.create(
        {
            "resourceType": "Communication",
            "status": "completed",
            "subject": {"reference": "Patient/p1"},
            "sender": {"reference": "Patient/p1"},
            "recipient": [{"reference": "CareTeam/team"}],
            "payload": [{"contentString": "Hello"}],
        }
    )
    reply = await sandbox.create(
        {
            "resourceType": "Communication",
            "status": "completed",
            "partOf": [{"reference": f"Communication/{root['id']}"}],
            "inResponseTo": [{"reference": f"Communication/{root['id']}"}],
            "subject": {"reference": "Patient/p1"},
            "sender": {"reference": "Practitioner/doc1"},
            "recipient": [{"reference": "Patient/p1"}],
            "payload": [{"contentString": "Hi"}],
        }
    )
    search = sandbox.search
    assert sandbox.ids(await search("/fhir/Communication", recipient="Patient/p1")) == [reply["id"]]
    assert sandbox.ids(await search("/fhir/Communication", sender="Practitioner/doc1")) == [
        reply["id"]
    ]
    part_of = await search("/fhir/Communication", **{"part-of": f"Communication/{root['id']}"})
    assert sandbox.ids(part_of) == [reply["id"]]
    task = await sandbox.create(
        {
            "resourceType": "Task",
            "status": "requested",
            "intent": "order",
            "for": {"reference": "Patient/p1"},
            "owner": {"reference": "CareTeam/team"},
        }
    )
    assert sandbox.ids(await search("/fhir/Task", patient="p1", status="requested")) == [task["id"]]
    assert (await search("/fhir/Task", owner="CareTeam/team"))["total"] == 1
    assert (await search("/fhir/Task", status="completed"))["total"] == 0
    qr = await sandbox.create(
        {
            "resourceType": "QuestionnaireResponse",
            "questionnaire": "http://example.org/fhir/Questionnaire/intake|1",
            "status": "completed",
            "subject": {"reference": "Patient/p1"},
        }
    )
    for value in (
        "http://example.org/fhir/Questionnaire/intake",
        "Questionnaire/intake",
        "intake",
    ):
        found = await search("/fhir/QuestionnaireResponse", questionnaire=value)
        assert sandbox.ids(found) == [qr["id"]], value
    assert (await search("/fhir/QuestionnaireResponse", subject="Patient/p1"))["total"] == 1


async def test_include_diagnostic_report_results(sandbox: Sandbox) -> None:
    obs = [await sandbox.create(_observation("p1", "2345-7", "2024-01-01")) for _ in range(2)]
    unrelated = await sandbox.create(_observation("p1", "718-7", "2024-01-01"))
    report = await sandbox.create(
        {
            "resourceType": "DiagnosticReport",
            "status": "final",
            "code": {"coding": [{"system": LOINC, "code": "51990-0"}]},
            "subject": {"reference": "Patient/p1"},
            "result": [{"reference": f"Observation/{o['id']}"} for o in obs],
        }
    )
    bundle = await sandbox.search(
        "/fhir/DiagnosticReport", patient="p1", _include="DiagnosticReport:result"
    )
    assert bundle["total"] == 1  # included resources do not count
    assert sandbox.ids(bundle) == [report["id"]]
    assert set(sandbox.ids(bundle, "include")) == {o["id"] for o in obs}
    assert unrelated["id"] not in sandbox.ids(bundle, "include")
    revinclude = await sandbox.search(
        "/fhir/Observation", _id=obs[0]["id"], _revinclude="DiagnosticReport:result"
    )
    assert sandbox.ids(revinclude, "include") == [report["id"]]


async def test_last_updated_and_sort(sandbox: Sandbox) -> None:
    created = []
    for n in range(4):
        created.append(await sandbox.create(patient(family=f"Order{n}", birthDate=f"198{3 - n}")))
        await asyncio.sleep(0.002)
    stamps = [c["meta"]["lastUpdated"] for c in created]
    assert (await sandbox.search("/fhir/Patient", _lastUpdated=f"gt{stamps[1]}"))["total"] == 2
    assert (await sandbox.search("/fhir/Patient", _lastUpdated=f"ge{stamps[1]}"))["total"] == 3
    assert (await sandbox.search("/fhir/Patient", _lastUpdated=f"lt{stamps[1]}"))["total"] == 1
    assert (await sandbox.search("/fhir/Patient", _lastUpdated=f"le{stamps[1]}"))["total"] == 2
    assert (await sandbox.search("/fhir/Patient", _lastUpdated=f"eq{stamps[2]}"))["total"] == 1
    assert (await sandbox.search("/fhir/Patient", _lastUpdated="ge2000-01-01"))["total"] == 4
    ids = [c["id"] for c in created]
    newest = await sandbox.search("/fhir/Patient", _sort="-_lastUpdated")
    assert sandbox.ids(newest) == list(reversed(ids))
    by_birth = await sandbox.search("/fhir/Patient", _sort="birthdate")
    assert sandbox.ids(by_birth) == list(reversed(ids))
    by_name = await sandbox.search("/fhir/Patient", _sort="-family")
    assert sandbox.ids(by_name) == list(reversed(ids))


async def test_sort_by_date_with_paging(sandbox: Sandbox) -> None:
    days = [5, 1, 9, 3, 7, 2]
    for day in days:
        await sandbox.create(_observation("p1", "2345-7", f"2024-01-{day:02d}"))
    first = await sandbox.search("/fhir/Observation", _sort="-date", _count=4)
    ids = await _all_pages(sandbox, first)
    stored = {
        e["resource"]["id"]: e["resource"]["effectiveDateTime"]
        for e in (await sandbox.search("/fhir/Observation"))["entry"]
    }
    assert [stored[i] for i in ids] == [f"2024-01-{d:02d}" for d in sorted(days, reverse=True)]


async def test_unknown_params_are_reported_or_rejected(sandbox: Sandbox) -> None:
    await sandbox.create(patient())
    lenient = await sandbox.search("/fhir/Patient", nonsense="1", family="testperson")
    assert lenient["total"] == 1
    outcomes = [e for e in lenient["entry"] if e["search"]["mode"] == "outcome"]
    assert len(outcomes) == 1
    assert "nonsense" in outcomes[0]["resource"]["issue"][0]["diagnostics"]
    assert "nonsense" not in (sandbox.link(lenient, "self") or "")
    strict = await sandbox.client.get(
        "/fhir/Patient", params={"nonsense": "1"}, headers={"Prefer": "handling=strict"}
    )
    assert strict.status_code == 400
    assert "nonsense" in sandbox.diagnostics(sandbox.outcome(strict))


async def test_post_search(sandbox: Sandbox) -> None:
    created = await sandbox.create(patient(family="Posted"))
    await sandbox.create(patient(family="Other"))
    response = await sandbox.client.post(
        "/fhir/Patient/_search",
        content="family=posted&_count=10",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 200
    assert sandbox.ids(response.json()) == [created["id"]]
    wrong = await sandbox.client.post(
        "/fhir/Patient/_search", content='{"family": "x"}', headers=FHIR_JSON
    )
    assert wrong.status_code == 415
    sandbox.outcome(wrong)


async def test_summary_count_and_count_zero(sandbox: Sandbox) -> None:
    for _ in range(3):
        await sandbox.create(patient())
    summary = await sandbox.search("/fhir/Patient", _summary="count")
    assert summary["total"] == 3
    assert "entry" not in summary
    assert (await sandbox.search("/fhir/Patient", _count=0))["total"] == 3


async def test_everything_pages_through_the_compartment(sandbox: Sandbox) -> None:
    await sandbox.put(patient(id="p1"))
    await sandbox.put(patient(id="p2"))
    await sandbox.put({"resourceType": "Practitioner", "id": "doc1", "name": [{"family": "Doc"}]})
    mine = []
    for n in range(7):
        obs = _observation("p1", "2345-7", f"2024-01-{n + 1:02d}")
        obs["performer"] = [{"reference": "Practitioner/doc1"}]
        mine.append((await sandbox.create(obs))["id"])
    mine.append(
        (
            await sandbox.create(
                {
                    "resourceType": "AllergyIntolerance",
                    "patient": {"reference": "Patient/p1"},
                    "code": {"text": "Peanut"},
                }
            )
        )["id"]
    )
    await sandbox.create(_observation("p2", "2345-7", "2024-01-01"))
    first_response = await sandbox.client.get("/fhir/Patient/p1/$everything", params={"_count": 3})
    assert first_response.status_code == 200
    first = first_response.json()
    assert first["type"] == "searchset"
    assert first["total"] == 9
    assert first["entry"][0]["resource"]["id"] == "p1"
    assert "doc1" in sandbox.ids(first, "include")
    ids = await _all_pages(sandbox, first)
    assert ids[0] == "p1"
    assert sorted(ids[1:]) == sorted(mine)
    limited = await sandbox.search("/fhir/Patient/p1/$everything", _type="AllergyIntolerance")
    assert sandbox.ids(limited) == [mine[-1]]
    missing = await sandbox.client.get("/fhir/Patient/nobody/$everything")
    assert missing.status_code == 404
    sandbox.outcome(missing)
