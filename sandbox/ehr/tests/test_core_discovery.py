"""SMART discovery works on the assembled app, at the server root and under the FHIR base
(SMART App Launch: `[base]/.well-known/smart-configuration`), not shadowed by FHIR routes."""

from __future__ import annotations

from pathlib import Path

import pytest

from ehr_sandbox.testing import running


@pytest.mark.parametrize(
    "path", ["/.well-known/smart-configuration", "/fhir/.well-known/smart-configuration"]
)
async def test_smart_configuration_is_served_by_the_real_app(tmp_path: Path, path: str) -> None:
    async with running(tmp_path) as box:
        response = await box.client.get(path, headers={"Authorization": ""})
    assert response.status_code == 200
    assert response.json()["token_endpoint"].endswith("/auth/token")
