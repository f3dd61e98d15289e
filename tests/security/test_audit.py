"""Audit that proves who saw what (issue 13): every access and every refused attempt is a
row with who, for whom, what, how it ended, through which app and in which trace; the
chain is keyed and anchored, so deleting a patient's rows and re-hashing, or cutting the
tail, is found by the gateway's scheduled verification, its ops route and its metrics."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from gateway import audit
from servicekit.testing import eventually

from .harness import Attack, Stack

pytestmark = [pytest.mark.integration]
OPS = {"Authorization": "Bearer dev-ops-token"}


async def _rows(stack: Stack, patient_fhir_id: str) -> list[dict[str, Any]]:
    async with stack.gateway.db.sessions() as session:
        result = await session.execute(
            text("SELECT * FROM access_log WHERE on_behalf_of = :p ORDER BY id"),
            {"p": patient_fhir_id},
        )
        return [dict(r) for r in result.mappings()]


@contextlib.asynccontextmanager
async def _restored_afterwards(stack: Stack) -> AsyncIterator[None]:
    """Tamper freely inside; the log (and so the other tests) is whole again after."""
    async with stack.gateway.db.transaction() as session:
        await session.execute(text("DROP TABLE IF EXISTS access_log_saved"))
        await session.execute(text("CREATE TABLE access_log_saved AS SELECT * FROM access_log"))
    try:
        yield
    finally:
        async with stack.gateway.db.transaction() as session:
            await session.execute(text("DELETE FROM access_log"))
            await session.execute(text("INSERT INTO access_log SELECT * FROM access_log_saved"))
            await session.execute(text("DROP TABLE access_log_saved"))


async def _verify(stack: Stack) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=30) as client:
        answer = await client.get("/ops/audit/verify", headers=OPS)
        assert answer.status_code == 200, answer.text
        body: dict[str, Any] = answer.json()
        return body


async def _some_history(stack: Stack, patient: str) -> str:
    token = await stack.linked_token(patient)
    async with httpx.AsyncClient(
        base_url=stack.gateway_url, headers={"Authorization": f"Bearer {token}"}, timeout=30
    ) as client:
        for _ in range(2):
            assert (await client.get("/v1/me/appointments")).status_code == 200
    return token


async def test_every_access_and_refusal_records_who_what_for_whom_and_how(
    stack: Stack, attack: Attack
) -> None:
    token = await stack.linked_token("sec-audit")
    narrow = (await stack.tokens("sec-audit", "patient/QuestionnaireResponse.c"))["access_token"]
    symptoms = {"age": 48, "sex": "female", "text": "A mild sore throat since yesterday"}
    async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=30) as client:
        full = {"Authorization": f"Bearer {token}"}
        read = await client.get("/v1/me/appointments", headers=full)
        wrote = await client.post("/v1/me/triage/assess", json=symptoms, headers=full)
        refused = await client.get(
            "/v1/me/appointments", headers={"Authorization": f"Bearer {narrow}"}
        )
        probe = await client.get("/v1/me/appointments/apt-not-mine", headers=full)
        log = await client.get("/v1/me/access-log", headers=full)
    assert (read.status_code, wrote.status_code, refused.status_code) == (200, 201, 403)
    rows = await _rows(stack, "sec-audit")
    seen = [(r["action"], r["resource"], r["outcome"]) for r in rows]
    attack(
        "read, triage write, a read without its scope, another id, the access log",
        "each recorded with actor, patient, record, outcome, client, trace, time",
        str(seen),
    )
    assert ("read", "Appointment", "allowed") in seen
    assert ("write", "QuestionnaireResponse", "allowed") in seen
    assert ("read", "Appointment", "denied") in seen
    assert ("read", "AuditEvent", "allowed") in seen
    for row in rows:
        assert row["actor_id"] == "sec-audit"  # the token's subject: the patient themself
        assert row["on_behalf_of"] == "sec-audit"
        assert row["patient_id"].startswith("pat-")
        assert row["client_id"] == "portal"
        assert row["trace_id"] and len(row["trace_id"]) == 32
        assert row["at"].tzinfo is not None
        assert row["chain"] == 2
    write = next(r for r in rows if r["action"] == "write")
    assert write["resource_id"]  # the triage session it made
    if probe.status_code == 404:
        assert any(r["resource_id"] == "apt-not-mine" for r in rows)
    shown = log.json()
    assert {"outcome", "client_id", "resource_id"} <= set(shown[0])


async def test_deleting_a_patients_rows_and_rehashing_is_detected(
    stack: Stack, attack: Attack
) -> None:
    await _some_history(stack, "sec-victim")
    await _some_history(stack, "sec-bystander")
    assert (await _verify(stack))["intact"]  # and anchored
    async with _restored_afterwards(stack):
        async with stack.gateway.db.transaction() as session:
            # An insider with database access but not the key removes one patient's trail
            # and re-links the rest with the unkeyed hash of old.
            await session.execute(text("DELETE FROM access_log WHERE on_behalf_of = 'sec-victim'"))
            rows = (
                await session.execute(
                    text(
                        "SELECT id, patient_id, actor, action, resource, at FROM access_log ORDER BY id"
                    )
                )
            ).all()
            from gateway.domain import GENESIS, access_hash

            prev = GENESIS
            for row in rows:
                digest = access_hash(
                    prev, row.patient_id, row.actor, row.action, row.resource, row.at
                )
                await session.execute(
                    text(
                        "UPDATE access_log SET chain = 1, prev_hash = :p, hash = :h WHERE id = :i"
                    ),
                    {"p": prev, "h": digest, "i": row.id},
                )
                prev = digest
        verdict = await _verify(stack)

        async def alarmed() -> bool:
            return audit.CHAIN_INTACT._value.get() == 0  # the scheduled verification saw it

        await eventually(alarmed, timeout=30)
    attack(
        "delete a patient's audit rows and re-hash the chain without the key",
        "verification fails, alarm metric 0",
        f"intact={verdict['intact']}: {verdict.get('problem')}",
    )
    assert verdict["intact"] is False
    assert verdict["checkpoints"] >= 1


async def test_cutting_the_tail_is_detected(stack: Stack, attack: Attack) -> None:
    await _some_history(stack, "sec-tail")
    anchored = await _verify(stack)  # anchors the present end
    assert anchored["intact"]
    async with _restored_afterwards(stack):
        async with stack.gateway.db.transaction() as session:
            await session.execute(
                text("DELETE FROM access_log WHERE id > (SELECT max(id) - 3 FROM access_log)")
            )
        verdict = await _verify(stack)
    attack(
        "cut the last 3 rows of the audit log",
        "verification fails (anchor)",
        f"intact={verdict['intact']}: {verdict.get('problem')}",
    )
    assert verdict["intact"] is False
    assert "missing" in verdict["problem"]
    restored = await _verify(stack)
    assert restored["intact"]
