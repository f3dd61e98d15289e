"""Caregiver (proxy) access attacked: a caregiver reaching past the patient's grant, granting
themself more, acting for a patient they are not related to, or carrying on after the
patient revoked their access (requests and an open event stream)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from gateway import store

from .harness import Attack, Stack

pytestmark = [pytest.mark.integration]
ROLE_CODES = "http://terminology.hl7.org/CodeSystem/v3-RoleCode"


async def _related(stack: Stack, rid: str, patient: str) -> None:
    put = await stack.sandbox.admin.put(
        f"/fhir/RelatedPerson/{rid}",
        json={
            "resourceType": "RelatedPerson",
            "id": rid,
            "active": True,
            "patient": {"reference": f"Patient/{patient}"},
            "relationship": [{"coding": [{"system": ROLE_CODES, "code": "DAUC"}]}],
        },
        headers={"Content-Type": "application/fhir+json"},
    )
    assert put.status_code in (200, 201), put.text


async def _caregiver_token(stack: Stack, patient: str, related: str) -> httpx.Response:
    return await stack.sandbox.admin.post(
        "/dev/patient-token", json={"patient": patient, "related_person": related}
    )


async def test_a_caregiver_stays_inside_the_grant_until_it_is_revoked(
    stack: Stack, attack: Attack
) -> None:
    patient = await stack.linked_token("sec-cg-mother")
    stranger = {"Authorization": f"Bearer {await stack.linked_token('sec-cg-stranger')}"}
    await _related(stack, "sec-cg-daughter", "sec-cg-mother")
    minted = await _caregiver_token(stack, "sec-cg-mother", "sec-cg-daughter")
    assert minted.status_code == 200, minted.text
    daughter = {"Authorization": f"Bearer {minted.json()['access_token']}"}
    mother = {"Authorization": f"Bearer {patient}"}
    elsewhere = await _caregiver_token(stack, "sec-cg-stranger", "sec-cg-daughter")
    # A caregiver of a patient who never signed in opens no account for them.
    await stack.create_patient("sec-cg-never")
    await _related(stack, "sec-cg-neighbour", "sec-cg-never")
    early = await _caregiver_token(stack, "sec-cg-never", "sec-cg-neighbour")
    assert early.status_code == 200, early.text
    async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=30) as client:
        before = (await client.get("/v1/me/appointments", headers=daughter)).status_code
        unlinked = await client.get(
            "/v1/me", headers={"Authorization": f"Bearer {early.json()['access_token']}"}
        )
        end = (datetime.now(UTC) + timedelta(days=7)).isoformat()
        granted = await client.post(
            "/v1/me/caregivers",
            headers=mother,
            json={"related_person": "sec-cg-daughter", "parts": ["appointments"], "end": end},
        )
        assert granted.status_code == 201, granted.text
        inside = (await client.get("/v1/me/appointments", headers=daughter)).status_code
        outside = (await client.get("/v1/me/lab-results", headers=daughter)).status_code
        more = await client.post(
            "/v1/me/caregivers",
            headers=daughter,
            json={"related_person": "sec-cg-daughter", "parts": ["results"], "end": end},
        )
        log = (await client.get("/v1/me/access-log", headers=daughter)).status_code

        opened, ended = asyncio.Event(), asyncio.Event()

        async def listen() -> None:
            async with client.stream("GET", "/v1/me/events", headers=daughter) as stream:
                assert stream.status_code == 200
                async for line in stream.aiter_lines():
                    if line == ": connected":
                        opened.set()
                    if line == "event: access-ended":
                        ended.set()

        listener = asyncio.create_task(listen())
        await asyncio.wait_for(opened.wait(), timeout=30)  # open before the revocation
        # Another patient cannot end (or learn of) the mother's grant.
        foreign = await client.delete(f"/v1/me/caregivers/{granted.json()['id']}", headers=stranger)
        revoked = await client.delete(f"/v1/me/caregivers/{granted.json()['id']}", headers=mother)
        assert revoked.status_code == 200, revoked.text
        await asyncio.wait_for(ended.wait(), timeout=30)
        await asyncio.wait_for(listener, timeout=10)  # the stream closed
        after = (await client.get("/v1/me/appointments", headers=daughter)).status_code
    attack(
        "caregiver: before a grant / granted part / other part / grants herself more / "
        "reads the access log / after revocation; token for a patient she is not related to; "
        "another patient revokes the grant; caregiver of a patient who never signed in",
        "403 / 200 / 403 / 403 / 403 / 403 (stream ended); 403; 404; 403",
        f"{before} / {inside} / {outside} / {more.status_code} / {log} / {after} "
        f"(stream ended); {elsewhere.status_code}; {foreign.status_code}; "
        f"{unlinked.status_code}",
    )
    assert (before, inside, outside, more.status_code, log, after) == (
        403,
        200,
        403,
        403,
        403,
        403,
    )
    assert elsewhere.status_code == 403
    assert foreign.status_code == 404
    assert unlinked.status_code == 403
    async with stack.gateway.db.sessions() as session:
        assert await store.link_for_identity(session, stack.sandbox.url, "sec-cg-never") is None
