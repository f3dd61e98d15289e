"""The EHR profile: capabilities detected from CapabilityStatements and overridden by
settings; auth modes; notification authentication by mutual TLS; ops routes answering a
gateway error (never a 500) when the EHR refuses."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from ehr_connector.ehr.auth import NoAuth, SmartBackendAuth, StaticBearerAuth, make_auth
from ehr_connector.ehr.errors import EhrAuthFailed
from ehr_connector.ehr.fhir_client import FhirClient
from ehr_connector.ehr.profile import BACKPORT_SUBSCRIPTION_PROFILE, detect
from ehr_connector.inbound import store as inbound_store
from ehr_connector.inbound.service.lifecycle import inbound_of
from ehr_connector.settings import Settings
from ehr_sandbox.testing.http import RunningSandbox
from servicekit.db import Database

from .conftest import Harness, ehr_settings

STATUS_OP = (
    "http://hl7.org/fhir/uv/subscriptions-backport/OperationDefinition/backport-subscription-status"
)


def _statement(subscription: dict[str, Any], **rest: Any) -> dict[str, Any]:
    return {
        "resourceType": "CapabilityStatement",
        "rest": [
            {"mode": "server", "resource": [{"type": "Subscription", **subscription}], **rest}
        ],
    }


def test_hapi_like_statement_gives_criteria_style_and_no_optional_capabilities() -> None:
    # What HAPI 8.8 says: Subscription with $validate and its own operations only.
    hapi = _statement({"operation": [{"name": "validate"}, {"name": "meta"}]})
    profile = detect(hapi, Settings(environment="test"))
    assert profile.subscription_style == "criteria"
    assert (
        not (profile.has_status or profile.has_events or profile.sends_heartbeats)
        and not profile.sends_handshake
    )


def test_backport_statement_gives_topics_status_and_heartbeats() -> None:
    backport = _statement(
        {
            "supportedProfile": [BACKPORT_SUBSCRIPTION_PROFILE],
            # Named freely: the definition's canonical is what counts.
            "operation": [{"name": "subscription-status", "definition": STATUS_OP}],
        }
    )
    profile = detect(backport, Settings(environment="test"))
    assert profile.subscription_style == "backport-topic"
    assert profile.has_status and not profile.has_events
    assert profile.sends_heartbeats and profile.sends_handshake


def test_settings_override_what_the_statement_says() -> None:
    hapi = _statement({"operation": [{"name": "validate"}]})
    settings = Settings(
        environment="test",
        ehr_subscription_style="backport-topic",
        ehr_sends_heartbeats=True,
        ehr_supports_events=True,
    )
    profile = detect(hapi, settings)
    assert profile.subscription_style == "backport-topic"
    assert profile.sends_heartbeats and profile.has_events
    assert not profile.has_status and not profile.sends_handshake


async def test_the_sandbox_statement_is_read_as_a_full_backport_server(
    sandbox: RunningSandbox,
) -> None:
    statement = (await sandbox.admin.get("/fhir/metadata")).json()
    profile = detect(statement, ehr_settings(sandbox))
    assert profile.subscription_style == "backport-topic"
    assert profile.has_status and profile.has_events
    assert profile.sends_heartbeats and profile.sends_handshake


# What production insists on (servicekit.secrets) besides the setting under test.
PROD_SECRETS = {
    "ops_token": "an-ops-token-for-this-test",
    "service_token_key": "a-service-token-key-for-this-test",
    "inbound_webhook_token": "a-webhook-token-for-this-test",
    "ehr_private_key_file": "/run/secrets/not-read-in-this-test.pem",
}


async def test_auth_modes() -> None:
    async with httpx.AsyncClient() as http:
        assert isinstance(make_auth(Settings(environment="test"), http), SmartBackendAuth)
        none = make_auth(Settings(environment="dev", ehr_auth_mode="none"), http)
        assert isinstance(none, NoAuth) and await none.token() == ""
        static = make_auth(
            Settings(
                environment="prod",
                ehr_auth_mode="static-bearer",
                ehr_static_token="t0k",
                **PROD_SECRETS,  # type: ignore[arg-type]
            ),
            http,
        )
        assert isinstance(static, StaticBearerAuth) and await static.token() == "t0k"
        with pytest.raises(EhrAuthFailed):
            make_auth(
                Settings(environment="prod", ehr_auth_mode="none", **PROD_SECRETS),  # type: ignore[arg-type]
                http,
            )
        with pytest.raises(EhrAuthFailed):
            make_auth(Settings(environment="test", ehr_auth_mode="static-bearer"), http)


@pytest.mark.integration
async def test_mtls_notification_auth_needs_the_terminators_verdict(harness: Harness) -> None:
    token = {"Authorization": "Bearer dev-webhook-token"}
    async with harness.connector(
        inbound_notification_auth="mtls", inbound_mtls_subject="CN=ehr.example.org"
    ) as (_, client):
        bare = await client.post("/fhir/notifications", content=b"{}", headers=token)
        assert bare.status_code == 401
        assert bare.json()["resourceType"] == "OperationOutcome"
        wrong = await client.post(
            "/fhir/notifications",
            content=b"{}",
            headers={**token, "X-Client-Verify": "SUCCESS", "X-Client-Subject": "CN=other"},
        )
        assert wrong.status_code == 401
        # Past authentication: what remains wrong is the body (not a Bundle).
        verified = await client.post(
            "/fhir/notifications",
            content=b"{}",
            headers={
                **token,
                "X-Client-Verify": "SUCCESS",
                "X-Client-Subject": "CN=ehr.example.org",
            },
        )
        assert verified.status_code == 400
        assert verified.json()["resourceType"] == "OperationOutcome"


@pytest.mark.integration
async def test_ops_routes_answer_a_gateway_error_when_the_ehr_refuses(harness: Harness) -> None:
    ops = {"Authorization": "Bearer dev-ops-token"}
    # A base URL where the sandbox serves no FHIR: every EHR call is refused with 404.
    # (Recipients are not checked at start: every read there is refused.)
    async with harness.connector(
        ehr_base_url=harness.sandbox.url + "/no-fhir-here",
        ehr_verify_recipients=False,
        inbound_enabled=True,
    ) as (
        _,
        client,
    ):
        ensure = await client.post("/ops/subscriptions/ensure", headers=ops)
        assert ensure.status_code == 502
        assert "EHR" in ensure.json()["detail"]
        # The list does not ask the EHR: every configured topic, missing.
        listed = await client.get("/ops/subscriptions", headers=ops)
        assert listed.status_code == 200
        assert {r["status"] for r in listed.json()} == {"missing"}


@pytest.mark.integration
async def test_topics_not_created_yet_are_listed_as_missing(harness: Harness) -> None:
    # In process, no server answers the webhook, so the connector never creates its
    # Subscriptions: every configured topic must be reported, as missing, not left out
    # (a partial list of active ones would read as healthy).
    ops = {"Authorization": "Bearer dev-ops-token"}
    async with harness.connector(inbound_enabled=True) as (_, client):
        response = await client.get("/ops/subscriptions", headers=ops)
    assert response.status_code == 200
    rows = response.json()
    assert {r["topic"] for r in rows} == set(harness.settings.inbound_topics.values())
    assert {r["status"] for r in rows} == {"missing"}
    assert all(r["subscription_id"] is None for r in rows)


class HandshakeFirst:
    """The connector's EHR client, with the EHR's handshake handled by the webhook before
    the update that requested the Subscription returns (a fast EHR does that): the
    webhook records `active` first."""

    def __init__(self, inner: FhirClient) -> None:
        self._inner = inner
        self.db: Database | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def update(self, resource: dict[str, Any], *, if_match: str | None = None) -> Any:
        result = await self._inner.update(resource, if_match=if_match)
        if resource.get("resourceType") == "Subscription" and resource["status"] == "requested":
            assert self.db is not None
            async with self.db.transaction() as session:
                row = await inbound_store.subscription_by_id(session, str(resource["id"]))
                assert row is not None, "the row is recorded before the EHR is asked"
                row.status = "active"  # what the webhook writes for a handshake
        return result


@pytest.mark.integration
async def test_a_handshake_handled_before_the_request_returns_leaves_the_subscription_active(
    harness: Harness,
) -> None:
    wrapped: list[HandshakeFirst] = []

    def wrap(inner: FhirClient) -> HandshakeFirst:
        wrapped.append(HandshakeFirst(inner))
        return wrapped[0]

    ops = {"Authorization": "Bearer dev-ops-token"}
    async with harness.connector(inbound_enabled=True, wrap_ehr=wrap) as (service, client):
        wrapped[0].db = service.db
        inbound = inbound_of(service)
        assert inbound is not None
        results = await inbound.manager.ensure()
        assert {r.action for r in results} == {"created"}
        assert {r.status for r in results} == {"active"}
        listed = (await client.get("/ops/subscriptions", headers=ops)).json()
    # Recording `requested` after the request had overwritten the handshake's `active`
    # until the next heartbeat.
    assert {r["status"] for r in listed} == {"active"}
