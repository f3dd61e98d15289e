"""The FHIR client against the sandbox over real HTTP: SMART auth, errors, retries, breaker."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
)
from joserfc.jwk import ECKey
from prometheus_client import REGISTRY

from ehr_connector.ehr.auth import SmartBackendAuth, load_signing_key
from ehr_connector.ehr.breaker import BreakerState
from ehr_connector.ehr.errors import (
    CircuitOpen,
    EhrAuthFailed,
    EhrConflict,
    EhrNotFound,
    EhrRejected,
    EhrUnavailable,
)
from ehr_connector.ehr.fhir_client import FhirClient
from ehr_connector.outbound.domain.identifiers import MESSAGE_ID, identifier, if_none_exist
from ehr_sandbox.auth.settings import AuthSettings
from ehr_sandbox.testing.http import RunningSandbox, free_port, running_sandbox
from servicekit.errors import DependencyUnavailable

from .conftest import ehr_settings


@pytest.fixture
async def client(ehr: RunningSandbox) -> AsyncIterator[FhirClient]:
    fhir = FhirClient(ehr_settings(ehr))
    yield fhir
    await fhir.aclose()


def _communication(message_id: str) -> dict[str, Any]:
    return {
        "resourceType": "Communication",
        "identifier": [identifier(MESSAGE_ID, message_id)],
        "status": "completed",
        "subject": {"reference": "Patient/demo-bob"},
        "payload": [{"contentString": "test"}],
    }


def _sample(name: str, labels: dict[str, str]) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_token_is_fetched_once_and_reused(client: FhirClient) -> None:
    for _ in range(5):
        await client.read("Patient", "demo-alice")
    assert client.auth.tokens_fetched == 1


async def test_a_token_is_refreshed_shortly_before_it_expires(ehr: RunningSandbox) -> None:
    now = [0.0]
    settings = ehr_settings(ehr, ehr_token_refresh_margin_s=30)
    async with httpx.AsyncClient() as http:
        auth = SmartBackendAuth(settings, http, clock=lambda: now[0])
        first = await auth.token()
        now[0] = 300 - 31  # sandbox tokens live 300 s; still outside the margin
        assert await auth.token() == first
        now[0] = 300 - 29
        second = await auth.token()
    assert second != first
    assert auth.tokens_fetched == 2


async def test_a_401_drops_the_token_and_retries_once_with_a_fresh_one(tmp_path: Path) -> None:
    # The EHR rotates its signing key with no grace: every token issued before is now
    # refused (401) although it has not expired.
    auth = AuthSettings(data_dir=tmp_path / "auth", key_grace_s=0)
    async with running_sandbox(tmp_path, port=free_port(), auth=auth) as sandbox:
        fhir = FhirClient(ehr_settings(sandbox))
        try:
            await fhir.search("Patient", [])
            rotated = await sandbox.admin.post("/auth/keys/rotate")
            assert rotated.status_code == 200
            before = _sample("ehr_call_seconds_count", _labels("search", "Patient", "401"))
            page = await fhir.search("Patient", [])
            after = _sample("ehr_call_seconds_count", _labels("search", "Patient", "401"))
        finally:
            await fhir.aclose()
    assert page.bundle["resourceType"] == "Bundle"
    assert fhir.auth.tokens_fetched == 2
    assert after == before + 1


def _labels(interaction: str, resource_type: str, status: str) -> dict[str, str]:
    return {"interaction": interaction, "resource_type": resource_type, "status": status}


async def test_an_unknown_key_is_an_auth_failure_the_events_wait_out(
    ehr: RunningSandbox, tmp_path: Path
) -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    pem = tmp_path / "stranger.pem"
    pem.write_bytes(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    fhir = FhirClient(
        ehr_settings(ehr, ehr_private_key_file=str(pem), ehr_key_id="portal-connector-1")
    )
    try:
        with pytest.raises(EhrAuthFailed, match="invalid_client") as caught:
            await fhir.read("Patient", "demo-alice")
    finally:
        await fhir.aclose()
    assert isinstance(caught.value, DependencyUnavailable)


def test_signing_keys_load_from_pem_and_jwk() -> None:
    rsa_pem = rsa.generate_private_key(65537, 2048).private_bytes(
        Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()
    )
    assert load_signing_key(rsa_pem, "k1").alg == "RS384"
    jwk = ECKey.generate_key("P-384").as_dict(private=True) | {"kid": "from-jwk"}
    loaded = load_signing_key(json.dumps(jwk).encode())
    assert (loaded.alg, loaded.kid) == ("ES384", "from-jwk")
    p256 = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()
    )
    with pytest.raises(ValueError, match="P-384"):
        load_signing_key(p256)


async def test_conditional_create_finds_the_first_resource_on_a_replay(client: FhirClient) -> None:
    message_id = f"msg-{uuid.uuid4().hex[:8]}"
    condition = if_none_exist(MESSAGE_ID, message_id)
    first = await client.create(_communication(message_id), if_none_exist=condition)
    again = await client.create(_communication(message_id), if_none_exist=condition)
    assert first.created and not again.created
    assert again.id == first.id and again.version_id == "1"


async def test_a_stale_if_match_is_a_conflict_with_the_ehrs_outcome(client: FhirClient) -> None:
    proposal = {
        "resourceType": "Appointment",
        "status": "proposed",
        "participant": [{"actor": {"reference": "Patient/demo-bob"}, "status": "needs-action"}],
    }
    created = await client.create(proposal)
    updated = await client.update(
        {**created.resource, "status": "pending"}, if_match=created.version_id
    )
    assert updated.version_id == "2"
    with pytest.raises(EhrConflict) as caught:
        await client.update({**created.resource, "status": "cancelled"}, if_match="1")
    assert caught.value.status == 412
    assert "Version conflict" in caught.value.outcome_text


async def test_not_found_and_invalid_are_permanent_with_the_outcome_text(
    client: FhirClient,
) -> None:
    with pytest.raises(EhrNotFound) as missing:
        await client.read("Appointment", "no-such-appointment")
    assert missing.value.status == 404
    assert missing.value.outcome_text
    # Sent as is (the connector's own resources are validated before; this one is not).
    with pytest.raises(EhrRejected) as invalid:
        await client.create({"resourceType": "Task", "status": "requested"})
    assert invalid.value.status == 422
    assert "intent" in str(invalid.value)


async def test_paging_follows_next_links_to_the_end(client: FhirClient) -> None:
    ids: list[str] = []
    total = None
    async for page in client.pages("Slot", [("schedule", "Schedule/sched-dr-adams")], count=100):
        total = page.total
        ids += [r["id"] for r in page.matches]
    assert total is not None and total > 100
    assert len(ids) == len(set(ids)) == total


async def test_a_paging_link_to_another_host_is_refused(client: FhirClient) -> None:
    page = await client.search("Slot", [("status", "free")], count=1)
    forged = type(page)(bundle=page.bundle, next_url="http://elsewhere.example/fhir/Slot?x=1")
    with pytest.raises(EhrRejected, match="leaves the EHR"):
        await client.next_page(forged)


async def test_everything_and_subscription_operations_answer(client: FhirClient) -> None:
    page = await client.everything("demo-bob", count=10)
    assert page.matches and page.matches[0]["resourceType"] == "Patient"
    with pytest.raises(EhrNotFound):
        await client.subscription_status("no-such-subscription")


async def test_rate_limited_calls_wait_for_retry_after_and_succeed(
    ehr: RunningSandbox, client: FhirClient
) -> None:
    await client.read("Patient", "demo-alice")  # token fetched outside the limit
    before = _sample("ehr_call_retries_total", {"interaction": "read", "reason": "http_429"})
    await ehr.admin.post("/sandbox/faults", json={"rate_limit": {"rate": 1, "retry_after_s": 1}})
    results = [await client.read("Patient", "demo-alice") for _ in range(3)]
    assert [r.id for r in results] == ["demo-alice"] * 3
    assert _sample("ehr_call_retries_total", {"interaction": "read", "reason": "http_429"}) > before
    assert client.breaker.state is BreakerState.CLOSED  # throttling is not an outage


async def test_an_outage_opens_the_circuit_then_a_trial_closes_it(ehr: RunningSandbox) -> None:
    fhir = FhirClient(
        ehr_settings(
            ehr,
            ehr_breaker_failure_threshold=3,
            ehr_breaker_reset_s=1.0,
            ehr_retry_attempts=2,
            ehr_retry_after_max_s=0.5,
        )
    )
    try:
        await fhir.read("Patient", "demo-alice")
        await ehr.admin.post("/sandbox/faults", json={"down_for_s": 3})
        for _ in range(3):
            # Retry-After (3 s) is longer than this call may wait: it gives up at once.
            with pytest.raises(EhrUnavailable) as down:
                await fhir.read("Patient", "demo-alice")
            assert down.value.status == 503
        assert fhir.breaker.state is BreakerState.OPEN
        assert (await fhir.probe() or "").startswith("unavailable: circuit open")
        with pytest.raises(CircuitOpen):
            await fhir.read("Patient", "demo-alice")
        await asyncio.sleep(3.2)
        recovered = await fhir.read("Patient", "demo-alice")
        assert recovered.id == "demo-alice"
        assert fhir.breaker.state is BreakerState.CLOSED
        assert await fhir.probe() is None
    finally:
        await fhir.aclose()


async def test_a_closing_client_refuses_new_calls_as_unavailable(ehr: RunningSandbox) -> None:
    fhir = FhirClient(ehr_settings(ehr))
    await fhir.aclose()
    with pytest.raises(EhrUnavailable, match="shutting down"):
        await fhir.read("Patient", "demo-alice")


async def _ledger(ehr: RunningSandbox, client_id: str) -> dict[str, Any]:
    """The sandbox's own record of what this client did under its rate limit."""
    shown = (await ehr.admin.get("/sandbox/faults")).json()
    ledger: dict[str, Any] = shown["rate_limit_clients"][client_id]
    return ledger


async def _concurrent_writes(
    ehr: RunningSandbox, form: str, count: int
) -> tuple[list[Any], dict[str, Any], list[str]]:
    fhir = FhirClient(ehr_settings(ehr, ehr_throttle_serial_s=5.0))
    try:
        await fhir.read("Patient", "demo-alice")  # the token is fetched before the limit
        limit = {
            "rate": 4.0,
            "burst": 2.0,
            "retry_after_s": 1,
            "writes_only": True,
            "retry_after_form": form,
        }
        assert (await ehr.admin.post("/sandbox/faults", json={"rate_limit": limit})).is_success
        ids = [f"msg-{uuid.uuid4().hex[:8]}" for _ in range(count)]
        written = await asyncio.gather(
            *(
                fhir.create(_communication(i), if_none_exist=if_none_exist(MESSAGE_ID, i))
                for i in ids
            )
        )
        return written, await _ledger(ehr, fhir.settings.ehr_client_id), ids
    finally:
        await fhir.aclose()


@pytest.mark.parametrize("form", ["seconds", "http-date"])
async def test_concurrent_writes_honour_every_retry_after_and_none_is_lost(
    ehr: RunningSandbox, form: str
) -> None:
    """Eight writes at once against 4 writes/s (burst 2): the EHR answers 429 with a
    Retry-After (delta-seconds or an HTTP date); the sandbox's ledger shows that no request
    came before a Retry-After expired, and every write exists once."""
    written, ledger, ids = await _concurrent_writes(ehr, form, 8)
    assert all(w.created for w in written)
    assert ledger["throttled"] >= 1  # the limit did bite
    assert ledger["after_throttle"] >= 1
    assert ledger["early"] == 0
    assert ledger["retry_after_compliance"] == 1.0
    assert ledger["passed"] == 8
    await ehr.admin.delete("/sandbox/faults")
    for message_id in ids:
        found = await ehr.admin.get(
            "/fhir/Communication", params={"identifier": f"{MESSAGE_ID}|{message_id}"}
        )
        assert found.json().get("total") == 1


async def test_a_retry_after_longer_than_a_call_may_wait_sends_nothing_more(
    ehr: RunningSandbox,
) -> None:
    """A Retry-After beyond `ehr_retry_after_max_s` ends the call as unavailable (the event
    waits in Kafka), and the next call is refused without a request reaching the EHR."""
    fhir = FhirClient(ehr_settings(ehr, ehr_retry_after_max_s=1.0))
    try:
        await fhir.read("Patient", "demo-alice")
        limit = {"rate": 0.1, "burst": 1.0, "retry_after_s": 30, "writes_only": True}
        await ehr.admin.post("/sandbox/faults", json={"rate_limit": limit})
        first = f"msg-{uuid.uuid4().hex[:8]}"
        await fhir.create(_communication(first), if_none_exist=if_none_exist(MESSAGE_ID, first))
        for _ in range(2):
            other = f"msg-{uuid.uuid4().hex[:8]}"
            with pytest.raises(EhrUnavailable) as waited:
                await fhir.create(
                    _communication(other), if_none_exist=if_none_exist(MESSAGE_ID, other)
                )
            assert waited.value.status == 429
        ledger = await _ledger(ehr, fhir.settings.ehr_client_id)
        assert (ledger["requests"], ledger["throttled"], ledger["early"]) == (2, 1, 0)
        assert await fhir.probe() is None  # throttled is not down
    finally:
        await fhir.aclose()
