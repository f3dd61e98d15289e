"""Service identity (issue 13): a domain service answers nobody but another service.

Two rings. First, generated from each service's own routes: every route of records,
scheduling, messaging, triage and the connector's internal routes is called over HTTP (the
service's ASGI app) without a token, with a token for another service, with a forged, an
expired and an unsigned token; health, metrics, `/ops` (ops token) and the connector's FHIR
webhook (its own authentication) stay outside. Second, against the running stack over TCP:
scheduling and triage refuse a caller without a token while the gateway, which signs its
calls, still gets its answers.
"""

from __future__ import annotations

import base64
import json
import re
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from joserfc import jwt
from joserfc.jwk import OctKey

from ehr_connector.app import create_app as connector_app
from ehr_connector.settings import Settings as ConnectorSettings
from messaging.app import create_app as messaging_app
from messaging.settings import Settings as MessagingSettings
from records.app import create_app as records_app
from records.settings import Settings as RecordsSettings
from scheduling.app import create_app as scheduling_app
from scheduling.settings import Settings as SchedulingSettings
from servicekit.identity import DEV_SERVICE_TOKEN_KEY, TOKEN_TYPE, ServiceTokens
from servicekit.limits import SECURITY_EVENTS
from servicekit.testing import service_headers
from triage.app import create_app as triage_app
from triage.settings import Settings as TriageSettings

from .harness import Attack, Stack

# Nothing listens there: the apps are only built (no lifespan), the check comes first.
NO_DB = "postgresql+asyncpg://nobody@127.0.0.1:1/none"
SERVICES: dict[str, Callable[[], FastAPI]] = {
    "records": lambda: records_app(RecordsSettings(database_url=NO_DB)),
    "scheduling": lambda: scheduling_app(SchedulingSettings(database_url=NO_DB)),
    "messaging": lambda: messaging_app(MessagingSettings(database_url=NO_DB)),
    "triage": lambda: triage_app(TriageSettings(database_url=NO_DB)),
    "ehr-connector": lambda: connector_app(
        ConnectorSettings(database_url=NO_DB, inbound_enabled=False)
    ),
}
# Routes with their own authentication or none by design.
OPEN = {"/healthz", "/readyz", "/metrics", "/openapi.json", "/docs", "/docs/oauth2-redirect"}
OWN_AUTH = re.compile(r"^/(ops|fhir)(/|$)")


def _internal_routes(app: FastAPI) -> list[tuple[str, str]]:
    """Every operation of the service's OpenAPI document but the open ones."""
    routes: list[tuple[str, str]] = []
    for template, operations in app.openapi()["paths"].items():
        if template in OPEN or OWN_AUTH.match(template):
            continue
        path = re.sub(r"\{[^}]+\}", "p-1", template)
        routes.extend((method.upper(), path) for method in sorted(operations))
    return routes


def _token(claims: dict[str, Any], key: str = DEV_SERVICE_TOKEN_KEY) -> str:
    header = {"alg": "HS256", "typ": TOKEN_TYPE}
    return jwt.encode(header, claims, OctKey.import_key(key.encode()))


def _unsigned(claims: dict[str, Any]) -> str:
    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'none', 'typ': TOKEN_TYPE})}.{part(claims)}."


def _claims(audience: str, *, issued: float | None = None) -> dict[str, Any]:
    now = int(time.time() if issued is None else issued)
    return {"iss": "gateway", "sub": "gateway", "aud": audience, "iat": now, "exp": now + 60}


async def _answers(
    app: FastAPI, routes: list[tuple[str, str]], headers: dict[str, str]
) -> set[int]:
    statuses: set[int] = set()
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://service"
    ) as client:
        for method, path in routes:
            response = await client.request(method, path, headers=headers)
            assert response.headers["content-type"] == "application/problem+json", (method, path)
            statuses.add(response.status_code)
    return statuses


@pytest.mark.parametrize("service", sorted(SERVICES))
async def test_every_internal_route_refuses_a_caller_without_a_valid_service_token(
    attack: Attack, service: str
) -> None:
    app = SERVICES[service]()
    routes = _internal_routes(app)
    assert routes, "the service has internal routes"
    other = "triage" if service != "triage" else "records"
    cases = {
        "no token": {},
        "not a bearer token": {"Authorization": "Basic Z2F0ZXdheTo="},
        "forged (other key)": {"Authorization": f"Bearer {_token(_claims(service), 'x' * 40)}"},
        "expired": {
            "Authorization": f"Bearer {_token(_claims(service, issued=time.time() - 3600))}"
        },
        "alg=none": {"Authorization": f"Bearer {_unsigned(_claims(service))}"},
        "another service's token": service_headers(other, caller="gateway"),
    }
    observed = {name: await _answers(app, routes, headers) for name, headers in cases.items()}
    expected = {name: {401} for name in cases} | {"another service's token": {403}}
    attack(
        f"{service}: {len(routes)} internal routes called with {', '.join(cases)}",
        "401 each, 403 for another service's token",
        "; ".join(f"{n}: {sorted(s)}" for n, s in observed.items()),
    )
    assert observed == expected


async def test_health_metrics_and_ops_do_not_take_service_tokens(attack: Attack) -> None:
    app = SERVICES["records"]()
    signed = service_headers("records", caller="gateway")
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://records"
    ) as client:
        health = (await client.get("/healthz")).status_code
        ops = (await client.get("/ops/outbox", headers=signed)).status_code
    attack("records: /healthz without, /ops with a service token", "200 / 401", f"{health} / {ops}")
    assert health == 200
    assert ops == 401  # /ops wants the ops token, a service token is not one


async def test_a_service_token_lasts_short_and_names_both_ends() -> None:
    tokens = ServiceTokens("gateway", DEV_SERVICE_TOKEN_KEY, ttl_s=60)
    decoded = jwt.decode(tokens.token("records"), OctKey.import_key(DEV_SERVICE_TOKEN_KEY.encode()))
    claims = decoded.claims
    assert (claims["iss"], claims["sub"], claims["aud"]) == ("gateway", "gateway", "records")
    assert claims["exp"] - claims["iat"] == 60
    assert decoded.header["typ"] == TOKEN_TYPE
    # Reused while young, renewed once half its life has passed.
    now = time.time()
    first = tokens.token("triage", now=now)
    assert tokens.token("triage", now=now + 10) == first
    assert tokens.token("triage", now=now + 31) != first


@pytest.mark.integration
async def test_domain_services_on_the_network_answer_only_services(
    stack: Stack, attack: Attack
) -> None:
    token = await stack.linked_token("sec-identity")
    before = SECURITY_EVENTS.labels("scheduling", "service_token_missing")._value.get()
    async with httpx.AsyncClient(timeout=10) as client:
        anonymous = await client.get(f"{stack.scheduling_url}/patients/p1/appointments")
        triage_direct = await client.post(
            f"{stack.triage_url}/emergency-check", json={"text": "I cannot breathe"}
        )
        wrong = await client.get(
            f"{stack.scheduling_url}/patients/p1/appointments",
            headers=service_headers("triage", caller="gateway"),
        )
        via_gateway = await client.get(
            f"{stack.gateway_url}/v1/me/appointments",
            headers={"Authorization": f"Bearer {token}"},
        )
    after = SECURITY_EVENTS.labels("scheduling", "service_token_missing")._value.get()
    attack(
        "reach scheduling/triage ports directly: no token, token for triage; via the gateway",
        "401 / 401 / 403 / gateway 200",
        f"{anonymous.status_code} / {triage_direct.status_code} / {wrong.status_code} / "
        f"gateway {via_gateway.status_code}",
    )
    assert anonymous.status_code == 401
    assert anonymous.headers["content-type"] == "application/problem+json"
    assert anonymous.headers["www-authenticate"].startswith("Bearer")
    assert triage_direct.status_code == 401
    assert wrong.status_code == 403
    assert via_gateway.status_code == 200
    assert after == before + 1
