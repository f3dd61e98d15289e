"""SMART token rules at the gateway, attacked over HTTP with tokens from the real issuer."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import ECKey

from gateway.app import build as build_gateway
from gateway.scopes import parse_scope
from gateway.settings import Settings as GatewaySettings

from .harness import Attack, Stack

pytestmark = [pytest.mark.integration]


# The sign-in code exchange is the one public /v1 route: it is how a patient gets a token.
PUBLIC = {("POST", "/v1/session")}


def _operations() -> list[tuple[str, str, list[str]]]:
    """(method, path, required scopes) of every /v1 operation in the gateway's OpenAPI
    document (the same document the running gateway serves; checked in the test)."""
    app = build_gateway(GatewaySettings(database_url="postgresql+asyncpg://u@127.0.0.1/x")).app
    out = []
    for path, item in app.openapi()["paths"].items():
        if not path.startswith("/v1/"):
            continue
        for method, op in item.items():
            if (method.upper(), path) in PUBLIC:
                continue
            scopes = [s for req in op.get("security", []) for s in req.get("smart", [])]
            out.append((method.upper(), path, scopes))
    return out


OPERATIONS = _operations()
ALL_SCOPES = sorted({s for _, _, scopes in OPERATIONS for s in scopes})


def _concrete(path: str) -> str:
    return path.replace("{position}", "0").replace("{", "x").replace("}", "")


def _query(path: str) -> dict[str, str]:
    if path == "/v1/slots":
        return {"start": (datetime.now(UTC) + timedelta(days=1)).isoformat()}
    if path.endswith("/trends"):
        return {"code": "4548-4"}
    return {}


async def _status(client: httpx.AsyncClient, method: str, path: str, token: str | None) -> int:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    body = {} if method == "POST" else None
    async with client.stream(
        method, _concrete(path), params=_query(path), headers=headers, json=body
    ) as response:
        return response.status_code


def test_every_patient_route_declares_a_scope(attack: Attack) -> None:
    missing = [f"{m} {p}" for m, p, scopes in OPERATIONS if not scopes]
    attack(
        f"a /v1 route without a declared SMART scope ({len(OPERATIONS)} routes)",
        "none",
        ", ".join(missing) or "none",
    )
    assert OPERATIONS and not missing, missing
    for scope in ALL_SCOPES:
        parse_scope(scope)  # each is a well-formed SMART scope


@pytest.mark.parametrize(("method", "path", "scopes"), OPERATIONS, ids=lambda v: str(v))
async def test_route_refuses_without_token_and_without_its_scope(
    stack: Stack, attack: Attack, method: str, path: str, scopes: list[str]
) -> None:
    required = [parse_scope(s) for s in scopes]
    # Every other route's scope, except any that would grant this route's.
    others = [s for s in ALL_SCOPES if not any(parse_scope(s).grants(r) for r in required)]
    patient = f"sec-route-{abs(hash((method, path))) % 10**8}"
    full = await stack.linked_token(patient, " ".join(["openid", *ALL_SCOPES]))
    narrowed = (await stack.tokens(patient, " ".join(["openid", *others])))["access_token"]
    async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=10) as client:
        served = (await client.get("/openapi.json")).json()
        op = served["paths"][path][method.lower()]
        assert [s for req in op["security"] for s in req["smart"]] == scopes
        anonymous = await _status(client, method, path, None)
        without = await _status(client, method, path, narrowed)
        control = await _status(client, method, path, full)
    attack(
        f"{method} {path} without token / without {' '.join(scopes)}",
        "401 / 403",
        f"{anonymous} / {without} (with it: {control})",
    )
    assert anonymous == 401
    assert without == 403
    assert control not in (401, 403)  # the scope is what made the difference


async def test_id_token_is_not_an_access_token(stack: Stack, attack: Attack) -> None:
    await stack.create_patient("sec-idtoken")
    tokens = await stack.tokens("sec-idtoken")
    async with httpx.AsyncClient(base_url=stack.gateway_url) as client:
        response = await client.get(
            "/v1/me", headers={"Authorization": f"Bearer {tokens['id_token']}"}
        )
    attack("OIDC ID token used as access token", "401", str(response.status_code))
    assert response.status_code == 401
    assert "access token" in response.json()["detail"]


@pytest.mark.parametrize(
    ("scope", "method", "path", "body"),
    [
        ("patient/*.write", "GET", "/v1/me/appointments", None),
        ("patient/Appointment.rs", "POST", "/v1/me/appointments", {"slot": "s1"}),
        ("patient/Observation.sr", "GET", "/v1/me/vital-signs", None),
        ("patient/Appointment.r", "GET", "/v1/me/appointments", None),
        ("patient/*.rs", "POST", "/v1/me/triage/assess", None),
    ],
)
async def test_scopes_are_exact(
    stack: Stack, attack: Attack, scope: str, method: str, path: str, body: Any
) -> None:
    token = await stack.linked_token("sec-exact", f"openid {scope}")
    async with httpx.AsyncClient(base_url=stack.gateway_url) as client:
        response = await client.request(
            method, path, headers={"Authorization": f"Bearer {token}"}, json=body
        )
    attack(f"scope {scope} on {method} {path}", "403", str(response.status_code))
    assert response.status_code == 403


async def test_triage_assess_needs_its_scope_and_is_audited(stack: Stack, attack: Attack) -> None:
    token = await stack.linked_token("sec-triage")
    body = {"age": 40, "sex": "female", "text": "mild headache since yesterday"}
    async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=10) as client:
        auth = {"Authorization": f"Bearer {token}"}
        assessed = await client.post("/v1/me/triage/assess", headers=auth, json=body)
        log = await client.get("/v1/me/access-log", headers=auth)
    entries = [(e["action"], e["resource"]) for e in log.json()]
    attack(
        "triage assessment leaves no audit trail",
        "201 and audited",
        f"{assessed.status_code}, audited={('write', 'QuestionnaireResponse') in entries}",
    )
    assert assessed.status_code == 201, assessed.text
    assert ("write", "QuestionnaireResponse") in entries


def _forged(kid: str) -> str:
    key = ECKey.generate_key("P-256")
    now = int(datetime.now(UTC).timestamp())
    claims = {"iss": "x", "aud": "portal", "exp": now + 60, "patient": "p", "sub": "p"}
    return jwt.encode({"alg": "ES256", "kid": kid}, claims, key)


async def test_unknown_kids_do_not_hammer_the_issuer(stack: Stack, attack: Attack) -> None:
    verifier = stack.gateway.state["verifier"]
    async with httpx.AsyncClient(base_url=stack.gateway_url) as client:
        await client.get("/v1/me", headers={"Authorization": f"Bearer {_forged('warm')}"})
        before = verifier.fetches
        statuses = set()
        for n in range(25):
            forged = _forged(f"unknown-{n}")
            response = await client.get("/v1/me", headers={"Authorization": f"Bearer {forged}"})
            statuses.add(response.status_code)
    fetched = verifier.fetches - before
    attack("25 tokens with unknown kids", "<= 1 JWKS fetch, 401", f"{fetched} fetches, {statuses}")
    assert statuses == {401}
    assert fetched <= 1


async def test_token_for_a_patient_unknown_to_the_ehr_is_not_linked(
    stack: Stack, attack: Attack
) -> None:
    await stack.create_patient("sec-gone")
    token = (await stack.tokens("sec-gone"))["access_token"]
    deleted = await stack.sandbox.admin.delete("/fhir/Patient/sec-gone")
    assert deleted.status_code in (200, 204), deleted.text
    async with httpx.AsyncClient(base_url=stack.gateway_url) as client:
        response = await client.get("/v1/me", headers={"Authorization": f"Bearer {token}"})
    attack("token for a patient the EHR does not know", "403", str(response.status_code))
    assert response.status_code == 403


async def test_alg_none_and_oversized_tokens_are_refused(stack: Stack, attack: Attack) -> None:
    def b64(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    none = f"{b64({'alg': 'none'})}.{b64({'patient': 'p', 'aud': 'portal'})}."
    async with httpx.AsyncClient(base_url=stack.gateway_url) as client:
        first = await client.get("/v1/me", headers={"Authorization": f"Bearer {none}"})
        huge = await client.get("/v1/me", headers={"Authorization": "Bearer " + "a" * 9000})
        metrics = (await client.get("/metrics")).text
    attack("alg=none / 9 kB token", "401 / 401", f"{first.status_code} / {huge.status_code}")
    assert first.status_code == 401
    assert huge.status_code == 401
    assert 'security_events_total{event="invalid_token",service="gateway"}' in metrics
