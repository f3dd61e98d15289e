"""The sandbox measured against HAPI: the same requests to both servers where the sandbox
claims the same behaviour (conditional create, If-Match, search paging, Subscription
activation), with the answers the FHIR R4 specification asks for. A difference here is a
sandbox bug (or a documented HAPI deviation), found before the connector relies on it."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio

from devstack._paths import free_port
from ehr_sandbox.testing.http import NotificationReceiver, backport_subscription, running_sandbox
from servicekit.testing import eventually

from .conftest import FHIR_JSON, Hapi

pytestmark = [pytest.mark.interop]

SYSTEM = "http://portal.example.org/fhir/sid/interop-check"


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def sandbox_fhir(
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[httpx.AsyncClient]:
    """The sandbox's FHIR base with its admin token."""
    data_dir: Path = tmp_path_factory.mktemp("sandbox-vs-hapi")
    async with (
        running_sandbox(data_dir, seed=False) as box,
        httpx.AsyncClient(
            base_url=box.fhir + "/",
            headers={
                "Content-Type": FHIR_JSON,
                "Accept": FHIR_JSON,
                **{"Authorization": box.admin.headers["Authorization"]},
            },
            timeout=30,
        ) as client,
    ):
        yield client


@pytest.fixture(params=["sandbox", "hapi"])
def server(
    request: pytest.FixtureRequest, sandbox_fhir: httpx.AsyncClient, hapi: Hapi
) -> httpx.AsyncClient:
    """Each check runs once against each server (`server.headers["X-Server"]` names it)."""
    client = sandbox_fhir if request.param == "sandbox" else hapi.client
    client.headers["X-Server"] = request.param
    return client


def _patient(value: str) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "identifier": [{"system": SYSTEM, "value": value}],
        "name": [{"family": "Compare"}],
    }


async def test_conditional_create_matches_instead_of_writing_twice(
    server: httpx.AsyncClient,
) -> None:
    value = uuid.uuid4().hex
    condition = {"If-None-Exist": f"identifier={SYSTEM}|{value}"}
    first = await server.post("Patient", json=_patient(value), headers=condition)
    second = await server.post("Patient", json=_patient(value), headers=condition)
    assert first.status_code == 201
    # R4 3.1.0.8.1: one match → 200 OK, nothing created.
    assert second.status_code == 200
    assert (
        second.headers["Location"]
        .split("/_history")[0]
        .endswith(first.headers["Location"].split("/_history")[0].rsplit("/fhir/", 1)[-1])
    )
    found = await server.get(
        "Patient", params={"identifier": f"{SYSTEM}|{value}"}, headers={"Cache-Control": "no-cache"}
    )
    assert len(found.json().get("entry", [])) == 1


async def test_conditional_create_with_several_matches_is_refused(
    server: httpx.AsyncClient,
) -> None:
    value = uuid.uuid4().hex
    for _ in range(2):
        assert (await server.post("Patient", json=_patient(value))).status_code == 201
    again = await server.post(
        "Patient", json=_patient(value), headers={"If-None-Exist": f"identifier={SYSTEM}|{value}"}
    )
    # R4 3.1.0.8.1: multiple matches → 412 Precondition Failed.
    assert again.status_code == 412, server.headers["X-Server"]


async def test_if_match_refuses_a_stale_version(server: httpx.AsyncClient) -> None:
    created = (await server.post("Patient", json=_patient(uuid.uuid4().hex))).json()
    pid, version = created["id"], created["meta"]["versionId"]
    body = {**created, "active": True}
    ok = await server.put(f"Patient/{pid}", json=body, headers={"If-Match": f'W/"{version}"'})
    assert ok.status_code == 200
    assert ok.json()["meta"]["versionId"] != version
    assert ok.headers["ETag"] == f'W/"{ok.json()["meta"]["versionId"]}"'
    stale = await server.put(f"Patient/{pid}", json=body, headers={"If-Match": f'W/"{version}"'})
    # R4 3.1.0.5.1 (managing resource contention): a stale version → 412. HAPI answers
    # 409 (HAPI-0989); the connector treats both as a conflict (EhrConflict), re-reads and
    # decides, so the sandbox keeps the specification's 412.
    expected = {412} if server.headers["X-Server"] == "sandbox" else {409, 412}
    assert stale.status_code in expected, server.headers["X-Server"]
    assert stale.json()["resourceType"] == "OperationOutcome"


async def test_search_pages_follow_next_links_to_every_match(server: httpx.AsyncClient) -> None:
    value = uuid.uuid4().hex
    for index in range(5):
        await server.post("Patient", json=_patient(f"{value}-{index}"))
    seen: list[str] = []
    page = (
        await server.get(
            "Patient",
            params={
                "identifier": ",".join(f"{SYSTEM}|{value}-{i}" for i in range(5)),
                "_count": "2",
            },
            headers={"Cache-Control": "no-cache"},
        )
    ).json()
    pages = 0
    while True:
        pages += 1
        assert page["type"] == "searchset"
        assert len(page.get("entry", [])) <= 2
        seen += [e["resource"]["id"] for e in page.get("entry", [])]
        following = [link["url"] for link in page.get("link", []) if link["relation"] == "next"]
        if not following:
            break
        page = (await server.get(following[0])).json()
    assert pages == 3
    assert len(seen) == len(set(seen)) == 5


async def test_backport_subscription_with_a_server_wide_filter_becomes_active(
    server: httpx.AsyncClient,
) -> None:
    """Both accept `<Type>?` as backport-filter-criteria (HAPI requires a filter, and this
    is the form meaning "all of the type"); the sandbox then sends the handshake the
    Backport IG describes, HAPI activates without one (a HAPI gap the connector's EHR
    profile covers by reading the status back; see the connector README)."""
    async with NotificationReceiver(port=free_port(), status=204) as receiver:
        subscription = backport_subscription("diagnosticreport-final", receiver.url + "/hook")
        subscription["_criteria"] = {
            "extension": [
                {
                    "url": "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/"
                    "backport-filter-criteria",
                    "valueString": "DiagnosticReport?",
                }
            ]
        }
        subscription["status"] = "requested"
        created = await server.post("Subscription", json=subscription)
        assert created.status_code == 201, created.text
        sid = created.json()["id"]

        async def active() -> bool:
            current = (await server.get(f"Subscription/{sid}")).json()
            return current["status"] == "active"

        await eventually(active, timeout=30, interval=0.2)
        handshakes = receiver.of_type("handshake")
        assert len(handshakes) == (1 if server.headers["X-Server"] == "sandbox" else 0)
        # Switched off again, so later tests' writes are not delivered to a closed receiver.
        current = (await server.get(f"Subscription/{sid}")).json()
        await server.put(f"Subscription/{sid}", json={**current, "status": "off"})
