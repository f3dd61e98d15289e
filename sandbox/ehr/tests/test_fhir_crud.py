"""Create, read, vread, update, delete, history, versioning headers and Prefer."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx

from ehr_sandbox.testing import BASE_URL, FHIR_JSON, Sandbox, patient, running

FHIR_BASE = BASE_URL + "/fhir"


async def test_create_assigns_id_version_and_headers(
    sandbox: Sandbox, fhir: httpx.AsyncClient
) -> None:
    response = await fhir.post("/fhir/Patient", json=patient(id="ignored"), headers=FHIR_JSON)
    assert response.status_code == 201
    body = response.json()
    assert body["id"] != "ignored"  # the server assigns ids on POST
    assert body["meta"]["versionId"] == "1"
    assert body["meta"]["lastUpdated"].endswith("Z")
    assert response.headers["etag"] == 'W/"1"'
    assert response.headers["location"] == f"{FHIR_BASE}/Patient/{body['id']}/_history/1"
    assert response.headers["last-modified"].endswith("GMT")
    assert response.headers["content-type"].startswith("application/fhir+json")


async def test_read_and_vread(sandbox: Sandbox, fhir: httpx.AsyncClient) -> None:
    created = await sandbox.create(patient())
    pid = created["id"]
    read = await fhir.get(f"/fhir/Patient/{pid}")
    assert read.status_code == 200
    assert read.json() == created
    assert read.headers["etag"] == 'W/"1"'
    updated = {**created, "gender": "female"}
    assert (
        await fhir.put(f"/fhir/Patient/{pid}", json=updated, headers=FHIR_JSON)
    ).status_code == 200
    v1 = await fhir.get(f"/fhir/Patient/{pid}/_history/1")
    v2 = await fhir.get(f"/fhir/Patient/{pid}/_history/2")
    assert v1.status_code == v2.status_code == 200
    assert "gender" not in v1.json()
    assert v2.json()["gender"] == "female"
    assert v2.headers["etag"] == 'W/"2"'
    missing = await fhir.get(f"/fhir/Patient/{pid}/_history/3")
    assert missing.status_code == 404
    sandbox.outcome(missing)


async def test_read_unknown_is_404_outcome(sandbox: Sandbox, fhir: httpx.AsyncClient) -> None:
    response = await fhir.get("/fhir/Patient/nope")
    assert response.status_code == 404
    assert "not known" in sandbox.diagnostics(sandbox.outcome(response))


async def test_if_none_match_gives_304(sandbox: Sandbox, fhir: httpx.AsyncClient) -> None:
    created = await sandbox.create(patient())
    response = await fhir.get(f"/fhir/Patient/{created['id']}", headers={"If-None-Match": 'W/"1"'})
    assert response.status_code == 304
    assert response.content == b""


async def test_update_increments_version(sandbox: Sandbox, fhir: httpx.AsyncClient) -> None:
    created = await sandbox.create(patient())
    response = await fhir.put(
        f"/fhir/Patient/{created['id']}", json={**created, "active": True}, headers=FHIR_JSON
    )
    assert response.status_code == 200
    assert response.json()["meta"]["versionId"] == "2"
    assert response.headers["etag"] == 'W/"2"'
    assert response.headers["location"].endswith(f"/Patient/{created['id']}/_history/2")
    assert response.json()["meta"]["lastUpdated"] > created["meta"]["lastUpdated"]


async def test_update_as_create_with_client_id(sandbox: Sandbox, fhir: httpx.AsyncClient) -> None:
    response = await fhir.put(
        "/fhir/Patient/client-chosen", json=patient(id="client-chosen"), headers=FHIR_JSON
    )
    assert response.status_code == 201
    assert response.json()["id"] == "client-chosen"
    assert response.headers["location"].endswith("/Patient/client-chosen/_history/1")
    assert (await fhir.get("/fhir/Patient/client-chosen")).status_code == 200


async def test_meta_from_client_is_overwritten_but_tags_kept(sandbox: Sandbox) -> None:
    meta = {
        "versionId": "99",
        "lastUpdated": "2001-01-01T00:00:00Z",
        "tag": [{"system": "urn:origin", "code": "portal"}],
    }
    stored = await sandbox.put(patient(id="tagged", meta=meta))
    assert stored["meta"]["versionId"] == "1"
    assert stored["meta"]["lastUpdated"] != "2001-01-01T00:00:00Z"
    assert stored["meta"]["tag"] == meta["tag"]


async def test_if_match_current_version_wins(sandbox: Sandbox, fhir: httpx.AsyncClient) -> None:
    created = await sandbox.create(patient())
    url = f"/fhir/Patient/{created['id']}"
    ok = await fhir.put(url, json=created, headers={**FHIR_JSON, "If-Match": 'W/"1"'})
    assert ok.status_code == 200
    stale = await fhir.put(url, json=created, headers={**FHIR_JSON, "If-Match": 'W/"1"'})
    assert stale.status_code == 412
    assert "conflict" in {i["code"] for i in sandbox.outcome(stale)["issue"]}
    assert (await fhir.get(url)).json()["meta"]["versionId"] == "2"


async def test_if_match_on_missing_resource_is_412(
    sandbox: Sandbox, fhir: httpx.AsyncClient
) -> None:
    response = await fhir.put(
        "/fhir/Patient/ghost", json=patient(id="ghost"), headers={**FHIR_JSON, "If-Match": 'W/"1"'}
    )
    assert response.status_code == 412
    sandbox.outcome(response)


async def test_malformed_if_match_is_400(sandbox: Sandbox, fhir: httpx.AsyncClient) -> None:
    created = await sandbox.create(patient())
    response = await fhir.put(
        f"/fhir/Patient/{created['id']}", json=created, headers={**FHIR_JSON, "If-Match": "abc"}
    )
    assert response.status_code == 400
    sandbox.outcome(response)


async def test_concurrent_if_match_updates_only_one_wins(
    sandbox: Sandbox, fhir: httpx.AsyncClient
) -> None:
    created = await sandbox.create(patient())
    url = f"/fhir/Patient/{created['id']}"

    async def attempt(n: int) -> int:
        body = {**created, "name": [{"family": f"Racer{n}"}]}
        response = await fhir.put(url, json=body, headers={**FHIR_JSON, "If-Match": 'W/"1"'})
        return response.status_code

    statuses = await asyncio.gather(*(attempt(n) for n in range(8)))
    assert sorted(statuses) == [200] + [412] * 7
    assert (await fhir.get(url)).json()["meta"]["versionId"] == "2"


async def test_delete_then_read_is_410(sandbox: Sandbox, fhir: httpx.AsyncClient) -> None:
    created = await sandbox.create(patient())
    url = f"/fhir/Patient/{created['id']}"
    deleted = await fhir.delete(url)
    assert deleted.status_code == 200
    assert deleted.headers["etag"] == 'W/"2"'
    sandbox.outcome(deleted)
    gone = await fhir.get(url)
    assert gone.status_code == 410
    assert {i["code"] for i in sandbox.outcome(gone)["issue"]} == {"deleted"}
    assert (await fhir.get(f"{url}/_history/2")).status_code == 410
    assert (await fhir.get(f"{url}/_history/1")).status_code == 200
    again = await fhir.delete(url)
    assert again.status_code == 204
    search = await sandbox.search("/fhir/Patient", _id=created["id"])
    assert search["total"] == 0


async def test_update_after_delete_recreates(sandbox: Sandbox, fhir: httpx.AsyncClient) -> None:
    created = await sandbox.create(patient())
    url = f"/fhir/Patient/{created['id']}"
    await fhir.delete(url)
    response = await fhir.put(url, json=created, headers=FHIR_JSON)
    assert response.status_code == 201
    assert response.json()["meta"]["versionId"] == "3"


async def test_delete_with_stale_if_match_is_412(sandbox: Sandbox, fhir: httpx.AsyncClient) -> None:
    created = await sandbox.create(patient())
    url = f"/fhir/Patient/{created['id']}"
    await fhir.put(url, json=created, headers=FHIR_JSON)
    response = await fhir.delete(url, headers={"If-Match": 'W/"1"'})
    assert response.status_code == 412
    assert (await fhir.get(url)).status_code == 200


async def test_instance_history(sandbox: Sandbox, fhir: httpx.AsyncClient) -> None:
    created = await sandbox.create(patient())
    url = f"/fhir/Patient/{created['id']}"
    await fhir.put(url, json={**created, "active": True}, headers=FHIR_JSON)
    await fhir.delete(url)
    response = await fhir.get(f"{url}/_history")
    assert response.status_code == 200
    bundle = response.json()
    assert bundle["type"] == "history"
    assert bundle["total"] == 3
    entries = bundle["entry"]
    assert [e["request"]["method"] for e in entries] == ["DELETE", "PUT", "POST"]
    assert [e["response"]["etag"] for e in entries] == ['W/"3"', 'W/"2"', 'W/"1"']
    assert "resource" not in entries[0]
    assert entries[1]["resource"]["active"] is True
    assert entries[2]["request"]["url"] == "Patient"
    assert entries[2]["response"]["status"].startswith("201")
    assert entries[1]["response"]["location"] == f"Patient/{created['id']}/_history/2"
    assert (await fhir.get("/fhir/Patient/unknown/_history")).status_code == 404


async def test_type_history_pages(sandbox: Sandbox, fhir: httpx.AsyncClient) -> None:
    for n in range(5):
        await sandbox.create(patient(family=f"Hist{n}"))
    first = (await fhir.get("/fhir/Patient/_history", params={"_count": 2})).json()
    assert first["total"] == 5
    seen = [e["resource"]["name"][0]["family"] for e in first["entry"]]
    url = sandbox.link(first, "next")
    while url:
        page = (await sandbox.follow(url)).json()
        seen += [e["resource"]["name"][0]["family"] for e in page["entry"]]
        url = sandbox.link(page, "next")
    assert seen == [f"Hist{n}" for n in reversed(range(5))]


async def test_history_since(sandbox: Sandbox, fhir: httpx.AsyncClient) -> None:
    first = await sandbox.create(patient(family="Before"))
    await asyncio.sleep(0.01)
    later = await sandbox.create(patient(family="After"))
    bundle = (
        await fhir.get("/fhir/Patient/_history", params={"_since": later["meta"]["lastUpdated"]})
    ).json()
    assert [e["resource"]["id"] for e in bundle["entry"]] == [later["id"]]
    assert first["id"] not in str(bundle)


async def test_prefer_return_minimal(sandbox: Sandbox, fhir: httpx.AsyncClient) -> None:
    response = await fhir.post(
        "/fhir/Patient", json=patient(), headers={**FHIR_JSON, "Prefer": "return=minimal"}
    )
    assert response.status_code == 201
    assert response.content == b""
    assert response.headers["etag"] == 'W/"1"'
    assert "/Patient/" in response.headers["location"]


async def test_prefer_return_operation_outcome(sandbox: Sandbox, fhir: httpx.AsyncClient) -> None:
    response = await fhir.post(
        "/fhir/Patient",
        json=patient(),
        headers={**FHIR_JSON, "Prefer": "return=OperationOutcome"},
    )
    assert response.status_code == 201
    outcome = sandbox.outcome(response)
    assert outcome["issue"][0]["severity"] == "information"
    assert "Created Patient/" in outcome["issue"][0]["diagnostics"]


async def test_prefer_return_representation_is_default(
    sandbox: Sandbox, fhir: httpx.AsyncClient
) -> None:
    response = await fhir.post(
        "/fhir/Patient", json=patient(), headers={**FHIR_JSON, "Prefer": "return=representation"}
    )
    assert response.json()["resourceType"] == "Patient"


async def test_conditional_create(sandbox: Sandbox, fhir: httpx.AsyncClient) -> None:
    body = patient(identifier=[{"system": "urn:test:mrn", "value": "A-1"}])
    condition = {**FHIR_JSON, "If-None-Exist": "identifier=urn:test:mrn|A-1"}
    first = await fhir.post("/fhir/Patient", json=body, headers=condition)
    assert first.status_code == 201
    second = await fhir.post("/fhir/Patient", json=body, headers=condition)
    assert second.status_code == 200
    assert second.json()["id"] == first.json()["id"]
    assert second.json()["meta"]["versionId"] == "1"
    await fhir.post("/fhir/Patient", json=body, headers=FHIR_JSON)  # a duplicate, unconditionally
    third = await fhir.post("/fhir/Patient", json=body, headers=condition)
    assert third.status_code == 412
    sandbox.outcome(third)


async def test_concurrent_conditional_creates_make_one_resource(
    sandbox: Sandbox, fhir: httpx.AsyncClient
) -> None:
    body = patient(identifier=[{"system": "urn:test:mrn", "value": "RACE"}])
    condition = {**FHIR_JSON, "If-None-Exist": "identifier=urn:test:mrn|RACE"}
    responses = await asyncio.gather(
        *(fhir.post("/fhir/Patient", json=body, headers=condition) for _ in range(6))
    )
    assert sorted(r.status_code for r in responses) == [200] * 5 + [201]
    assert len({r.json()["id"] for r in responses}) == 1


async def test_conditional_create_with_unknown_param_is_400(
    sandbox: Sandbox, fhir: httpx.AsyncClient
) -> None:
    response = await fhir.post(
        "/fhir/Patient", json=patient(), headers={**FHIR_JSON, "If-None-Exist": "bogus=1"}
    )
    assert response.status_code == 400
    assert "bogus" in sandbox.diagnostics(sandbox.outcome(response))


async def test_conditional_update(sandbox: Sandbox, fhir: httpx.AsyncClient) -> None:
    body = patient(identifier=[{"system": "urn:test:mrn", "value": "C-1"}])
    url = "/fhir/Patient?identifier=urn:test:mrn|C-1"
    created = await fhir.put(url, json=body, headers=FHIR_JSON)
    assert created.status_code == 201
    pid = created.json()["id"]
    updated = await fhir.put(url, json={**body, "active": False}, headers=FHIR_JSON)
    assert updated.status_code == 200
    assert updated.json()["id"] == pid
    assert updated.json()["meta"]["versionId"] == "2"
    wrong_id = await fhir.put(url, json={**body, "id": "other"}, headers=FHIR_JSON)
    assert wrong_id.status_code == 400
    await fhir.post("/fhir/Patient", json=body, headers=FHIR_JSON)
    ambiguous = await fhir.put(url, json=body, headers=FHIR_JSON)
    assert ambiguous.status_code == 412
    no_criteria = await fhir.put("/fhir/Patient", json=body, headers=FHIR_JSON)
    assert no_criteria.status_code == 400
    sandbox.outcome(no_criteria)


async def test_state_survives_a_restart(tmp_path: Path) -> None:
    async with running(tmp_path) as first:
        created = await first.create(patient(family="Durable"))
        await first.client.put(
            f"/fhir/Patient/{created['id']}", json={**created, "active": True}, headers=FHIR_JSON
        )
    async with running(tmp_path) as second:
        read = (await second.client.get(f"/fhir/Patient/{created['id']}")).json()
        assert read["meta"]["versionId"] == "2"
        assert read["active"] is True
        found = await second.search("/fhir/Patient", family="durable")
        assert found["total"] == 1
