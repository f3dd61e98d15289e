"""A patient's results, every boundary real: Alice signs in, her history is back-filled from
the EHR sandbox (FHIR search → connector → `record.imported` → records), and the gateway
shows each result with value, range, the EHR's flag, a plain-language explanation and the
trend; an amendment filed in the EHR replaces the value and keeps the earlier one as
history; her visit summary downloads with its content type."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from servicekit.testing import eventually

from .test_patient_journey import Portal, portal

pytestmark = [pytest.mark.e2e, pytest.mark.integration]
__all__ = ["portal"]
A1C = "4548-4"


async def test_back_filled_results_show_values_flags_explanations_trends_and_amendments(
    portal: Portal,
) -> None:
    token = (
        await portal.sandbox.admin.post("/dev/patient-token", json={"patient": "demo-alice"})
    ).json()["access_token"]
    async with httpx.AsyncClient(
        base_url=portal.gateway_url, headers={"Authorization": f"Bearer {token}"}, timeout=30
    ) as client:
        assert (await client.get("/v1/me")).status_code == 200
        reports: list[dict[str, Any]] = []

        async def a1c_back_filled() -> bool:
            nonlocal reports
            page = await client.get("/v1/me/lab-results", params={"code": A1C})
            reports = page.json()["items"] if page.status_code == 200 else []
            return len(reports) == 3 and all(r["observations"] for r in reports)

        await eventually(a1c_back_filled, timeout=120, interval=0.5)
        latest = reports[0]["observations"][0]
        assert latest["value_quantity"]["unit"] == "%"
        assert latest["flag"]["code"] == "high"  # the EHR marks it High
        assert latest["reference_ranges"][0]["high"]["value"] == 5.6
        assert latest["issued"] is not None and latest["performer"]
        assert latest["explanation"]["known"] is True

        trend = (await client.get("/v1/me/lab-results/trends", params={"code": A1C})).json()
        assert len(trend["points"]) == 3 and trend["direction"] in ("up", "down", "steady")
        assert [p["at"] for p in trend["points"]] == sorted(p["at"] for p in trend["points"])

        # The lab amends the newest report in the EHR: the live notification replaces the
        # value, and the back-filled version stays visible as history.
        amended = await portal.sandbox.admin.post(
            "/sandbox/simulate/lab-result",
            json={"patient": "demo-alice", "amend": reports[0]["id"]},
        )
        assert amended.status_code == 201, amended.text
        detail: dict[str, Any] = {}

        async def amendment_shown() -> bool:
            nonlocal detail
            response = await client.get(f"/v1/me/lab-results/{reports[0]['id']}")
            detail = response.json()
            return detail.get("status") == "amended"

        await eventually(amendment_shown, timeout=60, interval=0.5)
        result = detail["observations"][0]
        assert result["status"] == "amended"
        assert [h["value_quantity"]["value"] for h in result["history"]] == [
            latest["value_quantity"]["value"]
        ]

        documents: list[dict[str, Any]] = []

        async def summary_listed() -> bool:
            nonlocal documents
            documents = (await client.get("/v1/me/documents")).json()["items"]
            return bool(documents)

        await eventually(summary_listed, timeout=60, interval=0.5)
        summary = next(d for d in documents if d["id"] == "alice-doc-visit-summary")
        download = await client.get(f"/v1/me/documents/{summary['id']}/attachments/0")
        assert download.status_code == 200
        assert download.headers["content-type"].startswith("text/plain")
        assert b"Visit summary" in download.content
