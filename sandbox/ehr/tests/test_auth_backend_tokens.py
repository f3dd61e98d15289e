"""SMART Backend Services: the client-credentials grant with signed JWT assertions."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from joserfc import jwt
from joserfc.jwk import ECKey, KeySet, RSAKey

from ehr_sandbox.auth import router
from ehr_sandbox.auth.settings import AuthSettings
from ehr_sandbox.settings import SandboxSettings

BASE = "http://sandbox.test"
TOKEN_URL = f"{BASE}/auth/token"
ADMIN = {"Authorization": "Bearer test-admin"}
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


def _app(tmp_path: Path) -> FastAPI:
    app = FastAPI()
    app.state.settings = SandboxSettings(
        base_url=BASE, admin_token="test-admin", dev_mode=True, seed=False
    )
    app.state.auth_settings = AuthSettings(data_dir=tmp_path / "data")
    app.include_router(router)
    return app


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    app = _app(tmp_path)
    async with LifespanManager(app, startup_timeout=60, shutdown_timeout=60) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url=BASE) as http:
            yield http


def _assertion(
    key: ECKey | RSAKey,
    alg: str,
    client_id: str,
    *,
    aud: str = TOKEN_URL,
    exp_in: float = 240,
    jti: str | None = None,
) -> str:
    now = int(time.time())
    claims = {
        "iss": client_id,
        "sub": client_id,
        "aud": aud,
        "exp": int(now + exp_in),
        "iat": now,
        "jti": jti or uuid.uuid4().hex,
    }
    return jwt.encode({"alg": alg, "kid": key.kid, "typ": "JWT"}, claims, key, algorithms=[alg])


def _form(assertion: str, scope: str = "system/*.rs") -> dict[str, str]:
    return {
        "grant_type": "client_credentials",
        "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": assertion,
        "scope": scope,
    }


async def _register(
    http: httpx.AsyncClient, client_id: str, key: ECKey | RSAKey, **extra: Any
) -> None:
    body = {"client_id": client_id, "jwks": {"keys": [key.as_dict(private=False)]}, **extra}
    response = await http.post("/auth/clients", json=body, headers=ADMIN)
    assert response.status_code == 201, response.text


@pytest.fixture
def es_key() -> ECKey:
    return ECKey.generate_key("P-384", parameters={"kid": "es-1", "alg": "ES384"}, private=True)


@pytest.fixture
def rs_key() -> RSAKey:
    return RSAKey.generate_key(2048, parameters={"kid": "rs-1", "alg": "RS384"}, private=True)


async def _jwks(http: httpx.AsyncClient) -> dict[str, Any]:
    response = await http.get("/auth/jwks.json")
    assert response.status_code == 200
    body: dict[str, Any] = response.json()
    return body


async def test_es384_assertion_gets_a_token(client: httpx.AsyncClient, es_key: ECKey) -> None:
    await _register(client, "lab-app", es_key)
    response = await client.post(TOKEN_URL, data=_form(_assertion(es_key, "ES384", "lab-app")))
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 300
    assert body["scope"] == "system/*.rs"
    token = jwt.decode(
        body["access_token"],
        KeySet.import_key_set(await _jwks(client)),
        algorithms=["ES256"],
    )
    assert token.claims["sub"] == "lab-app"
    assert token.claims["scope"] == "system/*.rs"
    assert token.claims["aud"] == f"{BASE}/fhir"
    assert token.claims["exp"] - token.claims["iat"] == 300
    assert token.header["kid"] in {k["kid"] for k in (await _jwks(client))["keys"]}


async def test_rs384_assertion_gets_a_token(client: httpx.AsyncClient, rs_key: RSAKey) -> None:
    await _register(client, "rs-app", rs_key)
    response = await client.post(
        TOKEN_URL, data=_form(_assertion(rs_key, "RS384", "rs-app"), "system/Appointment.cruds")
    )
    assert response.status_code == 200, response.text
    assert response.json()["scope"] == "system/Appointment.cruds"


async def test_expired_assertion_is_rejected(client: httpx.AsyncClient, es_key: ECKey) -> None:
    await _register(client, "lab-app", es_key)
    response = await client.post(
        TOKEN_URL, data=_form(_assertion(es_key, "ES384", "lab-app", exp_in=-120))
    )
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_client"


async def test_assertion_too_far_in_the_future_is_rejected(
    client: httpx.AsyncClient, es_key: ECKey
) -> None:
    await _register(client, "lab-app", es_key)
    response = await client.post(
        TOKEN_URL, data=_form(_assertion(es_key, "ES384", "lab-app", exp_in=3600))
    )
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_client"


async def test_assertion_signed_by_another_key_is_rejected(
    client: httpx.AsyncClient, es_key: ECKey
) -> None:
    await _register(client, "lab-app", es_key)
    other = ECKey.generate_key("P-384", parameters={"kid": "es-1"}, private=True)
    response = await client.post(TOKEN_URL, data=_form(_assertion(other, "ES384", "lab-app")))
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_client"


async def test_wrong_audience_is_rejected(client: httpx.AsyncClient, es_key: ECKey) -> None:
    await _register(client, "lab-app", es_key)
    response = await client.post(
        TOKEN_URL,
        data=_form(_assertion(es_key, "ES384", "lab-app", aud="https://elsewhere/token")),
    )
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_client"


async def test_replayed_jti_is_rejected(client: httpx.AsyncClient, es_key: ECKey) -> None:
    await _register(client, "lab-app", es_key)
    assertion = _assertion(es_key, "ES384", "lab-app", jti="only-once")
    first = await client.post(TOKEN_URL, data=_form(assertion))
    assert first.status_code == 200
    again = await client.post(TOKEN_URL, data=_form(assertion))
    assert again.status_code == 401
    assert "already used" in again.json()["error_description"]
    fresh_same_jti = _assertion(es_key, "ES384", "lab-app", jti="only-once")
    assert (await client.post(TOKEN_URL, data=_form(fresh_same_jti))).status_code == 401


async def test_unknown_client_and_weak_algorithm_are_rejected(
    client: httpx.AsyncClient, es_key: ECKey
) -> None:
    response = await client.post(TOKEN_URL, data=_form(_assertion(es_key, "ES384", "nobody")))
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_client"
    await _register(client, "lab-app", es_key)
    p256 = ECKey.generate_key("P-256", parameters={"kid": "es-1"}, private=True)
    response = await client.post(TOKEN_URL, data=_form(_assertion(p256, "ES256", "lab-app")))
    assert response.status_code == 401


async def test_scope_errors(client: httpx.AsyncClient, es_key: ECKey) -> None:
    await _register(client, "narrow", es_key, scope="system/Observation.rs")
    allowed = await client.post(
        TOKEN_URL, data=_form(_assertion(es_key, "ES384", "narrow"), "system/Observation.read")
    )
    assert allowed.status_code == 200, allowed.text
    for scope in ("system/Appointment.c", "patient/*.rs", "system/*.xyz", ""):
        response = await client.post(
            TOKEN_URL, data=_form(_assertion(es_key, "ES384", "narrow"), scope)
        )
        assert response.status_code == 400, scope
        assert response.json()["error"] == "invalid_scope"


async def test_malformed_requests_are_oauth_errors(client: httpx.AsyncClient) -> None:
    response = await client.post(TOKEN_URL, json={"grant_type": "client_credentials"})
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"
    response = await client.post(TOKEN_URL, data={"grant_type": "password"})
    assert response.json()["error"] == "unsupported_grant_type"
    response = await client.post(
        TOKEN_URL, data=_form("not.a.jwt") | {"client_assertion": "garbage"}
    )
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_client"
    response = await client.post(
        TOKEN_URL,
        content=b"grant_type=a&grant_type=b",
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert response.json()["error"] == "invalid_request"


async def test_client_registration_is_admin_only_and_validated(
    client: httpx.AsyncClient, es_key: ECKey
) -> None:
    body = {"client_id": "x", "jwks": {"keys": [es_key.as_dict(private=False)]}}
    assert (await client.post("/auth/clients", json=body)).status_code == 401
    private = {"client_id": "x", "jwks": {"keys": [es_key.as_dict(private=True)]}}
    response = await client.post("/auth/clients", json=private, headers=ADMIN)
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    bad = await client.post("/auth/clients", content=b"{", headers=ADMIN)
    assert bad.status_code == 400


async def test_smart_configuration_is_served_at_both_places(client: httpx.AsyncClient) -> None:
    for path in ("/.well-known/smart-configuration", "/fhir/.well-known/smart-configuration"):
        config = (await client.get(path)).json()
        assert config["token_endpoint"] == TOKEN_URL
        assert config["token_endpoint_auth_signing_alg_values_supported"] == ["RS384", "ES384"]
        assert "client_credentials" in config["grant_types_supported"]
        assert "client-confidential-asymmetric" in config["capabilities"]


def _read_private_file(path: Path) -> tuple[int, bytes]:
    return path.stat().st_mode, path.read_bytes()


async def test_dev_client_key_pair_works(client: httpx.AsyncClient, tmp_path: Path) -> None:
    info = (await client.get("/dev/clients/portal-connector")).json()
    pem = Path(info["private_key_path"])
    assert str(pem).startswith(str(tmp_path))
    mode, content = _read_private_file(pem)
    assert mode & 0o077 == 0
    key = ECKey.import_key(content, parameters={"kid": info["kid"]})
    response = await client.post(
        TOKEN_URL, data=_form(_assertion(key, "ES384", "portal-connector"), "system/*.cruds")
    )
    assert response.status_code == 200, response.text
    assert (await client.get("/dev/clients/someone-else")).status_code == 404


async def test_clients_file_registers_clients(tmp_path: Path, rs_key: RSAKey) -> None:
    clients_file = tmp_path / "clients.json"
    document = {
        "clients": [
            {"client_id": "from-file", "jwks": {"keys": [rs_key.as_dict(private=False)]}},
            {"client_id": "broken", "jwks": {"keys": []}},
        ]
    }
    clients_file.write_text(json.dumps(document))
    app = _app(tmp_path)
    app.state.auth_settings = AuthSettings(data_dir=tmp_path / "data", clients_file=clients_file)
    async with LifespanManager(app, startup_timeout=60, shutdown_timeout=60) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url=BASE) as http:
            response = await http.post(
                TOKEN_URL, data=_form(_assertion(rs_key, "RS384", "from-file"))
            )
            assert response.status_code == 200, response.text
            broken = await http.post(TOKEN_URL, data=_form(_assertion(rs_key, "RS384", "broken")))
            assert broken.json()["error"] == "invalid_client"
