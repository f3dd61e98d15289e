"""The dev OIDC issuer: authorization code + PKCE (S256) for demo patients, end to end."""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import KeySet

from ehr_sandbox.testing.http import RunningSandbox, running_sandbox

FHIR_JSON = {"Content-Type": "application/fhir+json"}
REDIRECT = "http://127.0.0.1:8000/auth/callback"


@pytest.fixture
async def sandbox(tmp_path: Path) -> AsyncIterator[RunningSandbox]:
    async with running_sandbox(tmp_path) as running:
        for pid, given, family in (("alice", "Alice", "Walker"), ("bob", "Bob", "Stone")):
            patient = {
                "resourceType": "Patient",
                "id": pid,
                "active": True,
                "name": [{"given": [given], "family": family}],
            }
            response = await running.admin.put(
                f"/fhir/Patient/{pid}", json=patient, headers=FHIR_JSON
            )
            assert response.status_code == 201
        yield running


def _pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode()).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def _authorize_params(challenge: str, **extra: str) -> dict[str, str]:
    return {
        "response_type": "code",
        "client_id": "portal",
        "redirect_uri": REDIRECT,
        "scope": "openid fhirUser launch/patient patient/*.rs",
        "state": "st-123",
        "nonce": "n-456",
        "code_challenge": challenge,
        "code_challenge_method": "S256",
        **extra,
    }


def _hidden_fields(html: str) -> dict[str, str]:
    return dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', html))


async def _sign_in(
    http: httpx.AsyncClient, challenge: str, patient: str = "alice"
) -> dict[str, list[str]]:
    page = await http.get("/auth/authorize", params=_authorize_params(challenge))
    assert page.status_code == 200, page.text
    form = _hidden_fields(page.text) | {"patient": patient, "decision": "allow"}
    redirect = await http.post("/auth/authorize", data=form)
    assert redirect.status_code == 303
    location = redirect.headers["location"]
    assert location.startswith(REDIRECT + "?")
    return parse_qs(urlsplit(location).query)


async def _exchange(http: httpx.AsyncClient, code: str, verifier: str) -> httpx.Response:
    return await http.post(
        "/auth/token",
        data={
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": REDIRECT,
            "client_id": "portal",
            "code_verifier": verifier,
        },
    )


async def test_pkce_login_end_to_end(sandbox: RunningSandbox) -> None:
    async with httpx.AsyncClient(base_url=sandbox.url) as http:
        discovery = (await http.get("/.well-known/openid-configuration")).json()
        assert discovery["issuer"] == sandbox.url
        assert discovery["code_challenge_methods_supported"] == ["S256"]
        verifier, challenge = _pkce()
        page = await http.get("/auth/authorize", params=_authorize_params(challenge))
        html = page.text
        assert '<html lang="en">' in html
        assert "<legend>" in html
        for pid, name in (("alice", "Alice Walker"), ("bob", "Bob Stone")):
            assert f'value="{pid}"' in html
            assert name in html
        assert re.search(
            r'<label class="choice" for="patient-0"><input type="radio" id="patient-0"', html
        )
        query = await _sign_in(http, challenge)
        assert query["state"] == ["st-123"]
        (code,) = query["code"]
        response = await _exchange(http, code, verifier)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["patient"] == "alice"
        assert body["token_type"] == "Bearer"
        assert "patient/*.rs" in body["scope"].split()
        keys = KeySet.import_key_set((await http.get(discovery["jwks_uri"])).json())
        id_token = jwt.decode(body["id_token"], keys, algorithms=["ES256"]).claims
        assert id_token["iss"] == sandbox.url
        assert id_token["aud"] == "portal"
        assert id_token["sub"] == "alice"
        assert id_token["nonce"] == "n-456"
        access: dict[str, Any] = jwt.decode(body["access_token"], keys, algorithms=["ES256"]).claims
        assert access["patient"] == "alice"
        assert access["aud"] == "portal"
        assert access["fhirUser"] == f"{sandbox.fhir}/Patient/alice"
        headers = {"Authorization": f"Bearer {body['access_token']}"}
        assert (await http.get("/fhir/Patient/alice", headers=headers)).status_code == 200
        assert (await http.get("/fhir/Patient/bob", headers=headers)).status_code == 403
        # A code is single use.
        assert (await _exchange(http, code, verifier)).json()["error"] == "invalid_grant"


async def test_wrong_verifier_is_rejected(sandbox: RunningSandbox) -> None:
    async with httpx.AsyncClient(base_url=sandbox.url) as http:
        _verifier, challenge = _pkce()
        (code,) = (await _sign_in(http, challenge))["code"]
        other_verifier, _ = _pkce()
        response = await _exchange(http, code, other_verifier)
        assert response.status_code == 400
        assert response.json()["error"] == "invalid_grant"


async def test_authorization_request_errors(sandbox: RunningSandbox) -> None:
    async with httpx.AsyncClient(base_url=sandbox.url) as http:
        _verifier, challenge = _pkce()
        plain = await http.get(
            "/auth/authorize",
            params=_authorize_params(challenge, code_challenge_method="plain"),
        )
        assert plain.status_code == 303
        assert parse_qs(urlsplit(plain.headers["location"]).query)["error"] == ["invalid_request"]
        foreign = await http.get(
            "/auth/authorize",
            params=_authorize_params(challenge, redirect_uri="https://evil.example/cb"),
        )
        assert foreign.status_code == 400
        assert "text/html" in foreign.headers["content-type"]
        page = await http.get("/auth/authorize", params=_authorize_params(challenge))
        cancel = await http.post(
            "/auth/authorize", data=_hidden_fields(page.text) | {"decision": "deny"}
        )
        assert parse_qs(urlsplit(cancel.headers["location"]).query)["error"] == ["access_denied"]
        unknown = await http.post(
            "/auth/authorize",
            data=_hidden_fields(page.text) | {"decision": "allow", "patient": "mallory"},
        )
        assert unknown.status_code == 400


async def test_dev_issuer_is_absent_outside_dev_mode(tmp_path: Path) -> None:
    async with (
        running_sandbox(tmp_path, dev_mode=False) as sandbox,
        httpx.AsyncClient(base_url=sandbox.url) as http,
    ):
        assert (await http.get("/.well-known/openid-configuration")).status_code == 404
        assert (await http.get("/auth/authorize")).status_code == 404
        assert (await http.get("/dev/clients/portal-connector")).status_code == 404
        response = await http.post(
            "/auth/token", data={"grant_type": "authorization_code", "code": "x"}
        )
        assert response.json()["error"] == "unsupported_grant_type"
        assert (await http.get("/auth/jwks.json")).status_code == 200
        smart = (await http.get("/.well-known/smart-configuration")).json()
        assert smart["grant_types_supported"] == ["client_credentials"]


async def test_the_synthetic_monitoring_patient_is_not_offered_at_sign_in(
    sandbox: RunningSandbox,
) -> None:
    canary = {
        "resourceType": "Patient",
        "id": "canary",
        "active": True,
        "meta": {"tag": [{"system": "urn:ehr-sandbox:tags", "code": "synthetic-monitoring"}]},
        "name": [{"given": ["Synthetic"], "family": "Canary"}],
    }
    response = await sandbox.admin.put("/fhir/Patient/canary", json=canary, headers=FHIR_JSON)
    assert response.status_code == 201
    async with httpx.AsyncClient(base_url=sandbox.url) as http:
        _verifier, challenge = _pkce()
        page = await http.get("/auth/authorize", params=_authorize_params(challenge))
        assert 'value="alice"' in page.text
        assert 'value="canary"' not in page.text
        assert "Canary" not in page.text
        # Nor can the form be posted for it.
        form = _hidden_fields(page.text) | {"patient": "canary", "decision": "allow"}
        assert (await http.post("/auth/authorize", data=form)).status_code == 400
