"""Bearer tokens on FHIR calls: 401s, scope enforcement (403), patient compartments,
key rotation. The sandbox runs over real HTTP."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import ECKey

from ehr_sandbox.auth import mint_patient_token
from ehr_sandbox.auth.settings import AuthSettings
from ehr_sandbox.testing.http import RunningSandbox, running_sandbox

FHIR_JSON = {"Content-Type": "application/fhir+json"}
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


@pytest.fixture
async def sandbox(tmp_path: Path) -> AsyncIterator[RunningSandbox]:
    auth = AuthSettings(data_dir=tmp_path / "auth", key_grace_s=2)
    async with running_sandbox(tmp_path, auth=auth) as running:
        yield running


async def _create(sandbox: RunningSandbox, resource: dict[str, Any]) -> dict[str, Any]:
    if "id" in resource:
        path = f"/fhir/{resource['resourceType']}/{resource['id']}"
        response = await sandbox.admin.put(path, json=resource, headers=FHIR_JSON)
    else:
        response = await sandbox.admin.post(
            f"/fhir/{resource['resourceType']}", json=resource, headers=FHIR_JSON
        )
    assert response.status_code in (200, 201), response.text
    body: dict[str, Any] = response.json()
    return body


def _observation(patient: str) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": "heart rate"},
        "subject": {"reference": f"Patient/{patient}"},
    }


async def _backend_token(sandbox: RunningSandbox, scope: str) -> str:
    key = ECKey.generate_key("P-384", parameters={"kid": "k1"}, private=True)
    client_id = f"client-{uuid.uuid4().hex[:8]}"
    registration = {"client_id": client_id, "jwks": {"keys": [key.as_dict(private=False)]}}
    assert (await sandbox.admin.post("/auth/clients", json=registration)).status_code == 201
    now = int(time.time())
    claims = {
        "iss": client_id,
        "sub": client_id,
        "aud": sandbox.url + "/auth/token",
        "exp": now + 120,
        "jti": uuid.uuid4().hex,
    }
    assertion = jwt.encode({"alg": "ES384", "kid": "k1"}, claims, key, algorithms=["ES384"])
    async with httpx.AsyncClient(base_url=sandbox.url) as http:
        response = await http.post(
            "/auth/token",
            data={
                "grant_type": "client_credentials",
                "client_assertion_type": ASSERTION_TYPE,
                "client_assertion": assertion,
                "scope": scope,
            },
        )
    assert response.status_code == 200, response.text
    return str(response.json()["access_token"])


async def _get(sandbox: RunningSandbox, path: str, token: str | None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with httpx.AsyncClient(base_url=sandbox.url) as http:
        return await http.get(path, headers=headers)


async def _post(
    sandbox: RunningSandbox, path: str, token: str, body: dict[str, Any]
) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}", **FHIR_JSON}
    async with httpx.AsyncClient(base_url=sandbox.url) as http:
        return await http.post(path, json=body, headers=headers)


def _assert_outcome(response: httpx.Response, status: int) -> None:
    assert response.status_code == status, response.text
    assert response.json()["resourceType"] == "OperationOutcome"
    if status == 401:
        assert response.headers["www-authenticate"].startswith("Bearer")


async def test_missing_invalid_and_expired_tokens_get_401(sandbox: RunningSandbox) -> None:
    _assert_outcome(await _get(sandbox, "/fhir/Patient", None), 401)
    _assert_outcome(await _get(sandbox, "/fhir/Patient", "not-a-token"), 401)
    key = sandbox.app.state.auth.keys.current
    now = int(time.time())
    expired = jwt.encode(
        {"alg": "ES256", "kid": key.kid},
        {
            "iss": sandbox.url,
            "sub": "x",
            "aud": sandbox.fhir,
            "exp": now - 120,
            "iat": now - 500,
            "scope": "system/*.rs",
            "token_use": "access",
        },
        key,
        algorithms=["ES256"],
    )
    response = await _get(sandbox, "/fhir/Patient", expired)
    _assert_outcome(response, 401)
    assert 'error="invalid_token"' in response.headers["www-authenticate"]
    forged_key = ECKey.generate_key("P-256", parameters={"kid": key.kid}, private=True)
    forged = jwt.encode(
        {"alg": "ES256", "kid": key.kid},
        {"iss": sandbox.url, "aud": sandbox.fhir, "exp": now + 60, "scope": "system/*.rs"},
        forged_key,
        algorithms=["ES256"],
    )
    _assert_outcome(await _get(sandbox, "/fhir/Patient", forged), 401)


async def test_backend_scopes_are_enforced(sandbox: RunningSandbox) -> None:
    obs = await _create(sandbox, _observation("p1"))
    patient = await _create(sandbox, {"resourceType": "Patient", "id": "p1"})
    v2 = await _backend_token(sandbox, "system/Observation.rs")
    assert (await _get(sandbox, f"/fhir/Observation/{obs['id']}", v2)).status_code == 200
    assert (await _get(sandbox, "/fhir/Observation?patient=p1", v2)).status_code == 200
    _assert_outcome(await _get(sandbox, f"/fhir/Patient/{patient['id']}", v2), 403)
    _assert_outcome(await _post(sandbox, "/fhir/Observation", v2, _observation("p1")), 403)
    read_only = await _backend_token(sandbox, "system/Observation.r")
    _assert_outcome(await _get(sandbox, "/fhir/Observation?patient=p1", read_only), 403)
    v1 = await _backend_token(sandbox, "system/Observation.read")
    assert (await _get(sandbox, "/fhir/Observation?patient=p1", v1)).status_code == 200
    writer = await _backend_token(sandbox, "system/*.rs system/Appointment.cruds")
    appointment = {
        "resourceType": "Appointment",
        "status": "proposed",
        "participant": [{"actor": {"reference": "Patient/p1"}, "status": "needs-action"}],
    }
    assert (await _post(sandbox, "/fhir/Appointment", writer, appointment)).status_code == 201
    _assert_outcome(await _post(sandbox, "/fhir/Observation", writer, _observation("p1")), 403)
    everything = await _backend_token(sandbox, "system/*.*")
    assert (await _post(sandbox, "/fhir/Observation", everything, _observation("p1"))).is_success


async def test_patient_token_reads_only_its_own_compartment(sandbox: RunningSandbox) -> None:
    await _create(sandbox, {"resourceType": "Patient", "id": "alice", "active": True})
    await _create(sandbox, {"resourceType": "Patient", "id": "bob", "active": True})
    own = await _create(sandbox, _observation("alice"))
    other = await _create(sandbox, _observation("bob"))
    async with httpx.AsyncClient(base_url=sandbox.url) as http:
        minted = await http.post("/dev/patient-token", json={"patient": "alice"})
    assert minted.status_code == 200, minted.text
    token = minted.json()["access_token"]
    assert (await _get(sandbox, "/fhir/Patient/alice", token)).status_code == 200
    _assert_outcome(await _get(sandbox, "/fhir/Patient/bob", token), 403)
    assert (await _get(sandbox, f"/fhir/Observation/{own['id']}", token)).status_code == 200
    _assert_outcome(await _get(sandbox, f"/fhir/Observation/{other['id']}", token), 403)
    own_version = f"/fhir/Observation/{own['id']}/_history/1"
    assert (await _get(sandbox, own_version, token)).status_code == 200
    search = await _get(sandbox, "/fhir/Observation?patient=Patient/alice", token)
    assert search.status_code == 200
    assert {e["resource"]["id"] for e in search.json().get("entry", [])} == {own["id"]}
    _assert_outcome(await _get(sandbox, "/fhir/Observation", token), 403)
    _assert_outcome(await _get(sandbox, "/fhir/Observation?patient=alice,bob", token), 403)
    _assert_outcome(await _get(sandbox, "/fhir/Practitioner", token), 403)
    _assert_outcome(await _get(sandbox, "/fhir/Observation/_history", token), 403)
    assert (await _get(sandbox, "/fhir/Patient?_id=alice", token)).status_code == 200
    _assert_outcome(await _post(sandbox, "/fhir/Observation", token, _observation("alice")), 403)
    _assert_outcome(await _get(sandbox, "/fhir/Subscription/$status", token), 403)
    helper = mint_patient_token("alice", app=sandbox.app)
    assert (await _get(sandbox, "/fhir/Patient/alice", helper)).status_code == 200


async def test_a_token_that_passed_is_refused_once_it_expires(
    sandbox: RunningSandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Verified tokens are remembered: a later request is checked against the clock only,
    # so the clock must still refuse a remembered token once it has expired.
    await _create(sandbox, {"resourceType": "Patient", "id": "alice"})
    key = sandbox.app.state.auth.keys.current
    now = int(time.time())
    claims = {
        "iss": sandbox.url,
        "sub": "x",
        "aud": sandbox.fhir,
        "exp": now + 30,
        "iat": now,
        "scope": "system/*.rs",
        "token_use": "access",
    }
    token = jwt.encode({"alg": "ES256", "kid": key.kid}, claims, key, algorithms=["ES256"])
    assert (await _get(sandbox, "/fhir/Patient/alice", token)).status_code == 200
    assert (await _get(sandbox, "/fhir/Patient/alice", token)).status_code == 200
    skew = sandbox.app.state.auth.settings.clock_skew_s
    later = time.time() + 30 + skew + 1
    monkeypatch.setattr(time, "time", lambda: later)
    _assert_outcome(await _get(sandbox, "/fhir/Patient/alice", token), 401)


async def test_rotated_keys_keep_old_tokens_valid_within_the_grace(
    sandbox: RunningSandbox,
) -> None:
    await _create(sandbox, {"resourceType": "Patient", "id": "alice"})
    old_token = await _backend_token(sandbox, "system/*.rs")
    old_kid = jwt.decode(old_token, sandbox.app.state.auth.keys.verification_keys()).header["kid"]
    async with httpx.AsyncClient(base_url=sandbox.url) as http:
        assert (await http.post("/auth/keys/rotate")).status_code == 401
    rotated = await sandbox.admin.post("/auth/keys/rotate")
    assert rotated.status_code == 200
    new_kid = rotated.json()["kid"]
    assert new_kid != old_kid
    jwks = (await _get(sandbox, "/auth/jwks.json", None)).json()
    assert [k["kid"] for k in jwks["keys"]] == [new_kid, old_kid]
    assert (await _get(sandbox, "/fhir/Patient/alice", old_token)).status_code == 200
    new_token = await _backend_token(sandbox, "system/*.rs")
    assert (
        jwt.decode(new_token, sandbox.app.state.auth.keys.verification_keys()).header["kid"]
        == new_kid
    )
    await asyncio.sleep(2.2)  # the grace period of this sandbox is 2 s
    jwks = (await _get(sandbox, "/auth/jwks.json", None)).json()
    assert [k["kid"] for k in jwks["keys"]] == [new_kid]
    _assert_outcome(await _get(sandbox, "/fhir/Patient/alice", old_token), 401)
    assert (await _get(sandbox, "/fhir/Patient/alice", new_token)).status_code == 200
