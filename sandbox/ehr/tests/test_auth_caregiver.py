"""Caregivers: a RelatedPerson signs in acting for the patient they are recorded for
(SMART `fhirUser` = the RelatedPerson, `patient` = the patient), and the sandbox stores
RelatedPerson and Consent resources like any other."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx

from ehr_sandbox.testing import Sandbox

FHIR_JSON = {"Content-Type": "application/fhir+json"}
REDIRECT = "http://127.0.0.1:8000/auth/callback"


def _claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    decoded: dict[str, Any] = json.loads(
        base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    )
    return decoded


async def _put(fhir: httpx.AsyncClient, resource: dict[str, Any]) -> None:
    response = await fhir.put(
        f"/fhir/{resource['resourceType']}/{resource['id']}", json=resource, headers=FHIR_JSON
    )
    assert response.status_code in (200, 201), response.text


def _related(rid: str, patient: str, code: str, *, active: bool = True) -> dict[str, Any]:
    return {
        "resourceType": "RelatedPerson",
        "id": rid,
        "active": active,
        "patient": {"reference": f"Patient/{patient}"},
        "relationship": [
            {
                "coding": [
                    {"system": "http://terminology.hl7.org/CodeSystem/v3-RoleCode", "code": code}
                ]
            }
        ],
        "name": [{"family": "Example", "given": ["Pat"]}],
    }


def _consent(
    cid: str, patient: str, related: str, types: list[str], *, end: str = "2999-01-01"
) -> dict[str, Any]:
    return {
        "resourceType": "Consent",
        "id": cid,
        "status": "active",
        "scope": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/consentscope",
                    "code": "patient-privacy",
                }
            ]
        },
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"reference": f"Patient/{patient}"},
        "policyRule": {
            "coding": [
                {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTIN"}
            ]
        },
        "provision": {
            "type": "permit",
            "period": {"start": "2020-01-01T00:00:00+00:00", "end": f"{end}T00:00:00+00:00"},
            "actor": [
                {
                    "role": {
                        "coding": [
                            {
                                "system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                                "code": "PRCP",
                            }
                        ]
                    },
                    "reference": {"reference": f"RelatedPerson/{related}"},
                }
            ],
            "class": [{"system": "http://hl7.org/fhir/resource-types", "code": t} for t in types],
        },
    }


async def test_a_caregiver_signs_in_for_the_patient_they_are_recorded_for(
    sandbox: Sandbox, fhir: httpx.AsyncClient
) -> None:
    for pid in ("kid", "other"):
        await _put(fhir, {"resourceType": "Patient", "id": pid, "birthDate": "2016-05-01"})
    await _put(fhir, _related("mum", "kid", "MTH"))
    await _put(fhir, _related("gone", "kid", "FTH", active=False))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=sandbox.app), base_url="http://test"
    ) as anonymous:
        response = await anonymous.post(
            "/dev/patient-token", json={"patient": "kid", "related_person": "mum"}
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert "id_token" not in body  # the user is not the patient
        claims = _claims(body["access_token"])
        assert claims["patient"] == "kid"
        assert claims["fhirUser"].endswith("/RelatedPerson/mum")
        assert claims["sub"] == "mum"
        # Without the patient's Consent the caregiver reads nothing; with it, what it lists,
        # in the patient's compartment only, while it is active.
        headers = {"Authorization": f"Bearer {body['access_token']}"}

        async def status(path: str, **params: str) -> int:
            return (await anonymous.get(path, headers=headers, params=params)).status_code

        assert await status("/fhir/Patient/kid") == 403
        consent = _consent("c-kid", "kid", "mum", ["Communication"])
        await _put(fhir, consent)
        assert await status("/fhir/Patient/kid") == 200
        assert await status("/fhir/Communication", patient="kid") == 200
        assert await status("/fhir/Observation", patient="kid") == 403
        assert await status("/fhir/Patient/other") == 403
        await _put(fhir, {**consent, "status": "inactive"})
        assert await status("/fhir/Patient/kid") == 403
        await _put(fhir, _consent("c-old", "kid", "mum", ["Communication"], end="2020-01-01"))
        assert await status("/fhir/Patient/kid") == 403  # its period is over
        # Someone else's patient, an inactive caregiver, an unknown one: refused.
        for related, patient, status in (
            ("mum", "other", 403),
            ("gone", "kid", 403),
            ("nobody", "kid", 404),
        ):
            refused = await anonymous.post(
                "/dev/patient-token", json={"patient": patient, "related_person": related}
            )
            assert refused.status_code == status, refused.text
            sandbox.outcome(refused)


async def test_consents_are_stored_and_searched_by_patient_and_actor(
    fhir: httpx.AsyncClient,
) -> None:
    await _put(fhir, {"resourceType": "Patient", "id": "ann"})
    await _put(fhir, _related("sis", "ann", "SIS"))
    consent = {
        "resourceType": "Consent",
        "id": "c1",
        "status": "active",
        "scope": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/consentscope",
                    "code": "patient-privacy",
                }
            ]
        },
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"reference": "Patient/ann"},
        "policyRule": {
            "coding": [
                {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTIN"}
            ]
        },
        "provision": {
            "type": "permit",
            "period": {"start": "2026-01-01T00:00:00+00:00", "end": "2027-01-01T00:00:00+00:00"},
            "actor": [
                {
                    "role": {
                        "coding": [
                            {
                                "system": "http://terminology.hl7.org/CodeSystem/v3-RoleClass",
                                "code": "AGNT",
                            }
                        ]
                    },
                    "reference": {"reference": "RelatedPerson/sis"},
                }
            ],
        },
    }
    await _put(fhir, consent)
    found = await fhir.get(
        "/fhir/Consent", params={"patient": "Patient/ann", "actor": "RelatedPerson/sis"}
    )
    assert found.status_code == 200, found.text
    assert [e["resource"]["id"] for e in found.json().get("entry", [])] == ["c1"]
    people = await fhir.get("/fhir/RelatedPerson", params={"patient": "ann"})
    assert [e["resource"]["id"] for e in people.json().get("entry", [])] == ["sis"]


async def test_a_caregiver_signs_in_through_the_code_flow(
    sandbox: Sandbox, fhir: httpx.AsyncClient
) -> None:
    await _put(fhir, {"resourceType": "Patient", "id": "kid", "name": [{"given": ["Kit"]}]})
    await _put(fhir, _related("mum", "kid", "MTH"))
    await _put(fhir, _related("gone", "kid", "FTH", active=False))
    verifier = secrets.token_urlsafe(48)
    challenge = (
        base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    )
    params = {
        "response_type": "code",
        "client_id": "portal",
        "redirect_uri": REDIRECT,
        "scope": "openid fhirUser launch/patient patient/*.rs",
        "state": "st",
        "code_challenge": challenge,
        "code_challenge_method": "S256",
    }
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=sandbox.app), base_url="http://test"
    ) as http:
        page = await http.get("/auth/authorize", params=params)
        assert page.status_code == 200, page.text
        assert 'value="RelatedPerson/mum"' in page.text
        assert "Caregiver of" in page.text
        assert 'value="RelatedPerson/gone"' not in page.text  # inactive: not offered
        hidden = dict(
            re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', page.text)
        )
        refused = await http.post(
            "/auth/authorize",
            data=hidden | {"patient": "RelatedPerson/gone", "decision": "allow"},
        )
        assert refused.status_code == 400
        redirect = await http.post(
            "/auth/authorize", data=hidden | {"patient": "RelatedPerson/mum", "decision": "allow"}
        )
        assert redirect.status_code == 303, redirect.text
        (code,) = parse_qs(urlsplit(redirect.headers["location"]).query)["code"]
        token = await http.post(
            "/auth/token",
            data={
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": REDIRECT,
                "client_id": "portal",
                "code_verifier": verifier,
            },
        )
        assert token.status_code == 200, token.text
        body = token.json()
        assert body["patient"] == "kid"
        access = _claims(body["access_token"])
        assert access["patient"] == "kid"
        assert access["fhirUser"].endswith("/RelatedPerson/mum")
        assert _claims(body["id_token"])["fhirUser"].endswith("/RelatedPerson/mum")
