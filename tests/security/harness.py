"""What the security tests share: the running stack and the attack recorder type."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from ehr_sandbox.testing.http import RunningSandbox
from servicekit.app import Service

Attack = Callable[[str, str, str], None]


@dataclass
class Stack:
    """The running servers and what tests need to attack them."""

    sandbox: RunningSandbox
    gateway: Service
    gateway_url: str
    scheduling_url: str
    scheduling: Service
    limited_url: str  # a second gateway replica with small rate limits
    triage_url: str = ""
    anchors: str = ""  # the gateways' audit checkpoint directory

    async def create_patient(self, patient: str) -> None:
        put = await self.sandbox.admin.put(
            f"/fhir/Patient/{patient}",
            json={"resourceType": "Patient", "id": patient, "name": [{"family": "Test"}]},
            headers={"Content-Type": "application/fhir+json"},
        )
        assert put.status_code in (200, 201), put.text

    async def tokens(self, patient: str, scope: str | None = None) -> dict[str, Any]:
        """The sandbox's dev token response (access_token, id_token) for an existing patient."""
        body: dict[str, Any] = {"patient": patient}
        if scope is not None:
            body["scope"] = scope
        response = await self.sandbox.admin.post("/dev/patient-token", json=body)
        assert response.status_code == 200, response.text
        result: dict[str, Any] = response.json()
        return result

    async def linked_token(self, patient: str, scope: str | None = None) -> str:
        """An access token of a patient whose account is linked (the first visit done)."""
        await self.create_patient(patient)
        full = (await self.tokens(patient))["access_token"]
        async with httpx.AsyncClient(base_url=self.gateway_url, timeout=30) as client:
            me = await client.get("/v1/me", headers={"Authorization": f"Bearer {full}"})
            assert me.status_code == 200, me.text
        if scope is None:
            return str(full)
        return str((await self.tokens(patient, scope))["access_token"])
