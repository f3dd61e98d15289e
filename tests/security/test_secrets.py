"""Development secrets outside development: a service started the way the supervisor and
Kubernetes start it (uvicorn --factory) refuses to start and names each offending setting."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from .harness import Attack

SERVICES = {
    "gateway": ("gateway.app:create_app", {}, ["OPS_TOKEN", "SERVICE_TOKEN_KEY"]),
    "ehr-connector": (
        "ehr_connector.app:create_app",
        {"OPS_TOKEN": "a-long-production-ops-token-0123456789"},
        ["INBOUND_WEBHOOK_TOKEN", "EHR_PRIVATE_KEY_FILE", "SERVICE_TOKEN_KEY"],
    ),
}


def _start(app: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {
        k: v
        for k, v in os.environ.items()
        if k not in ("OPS_TOKEN", "ENVIRONMENT", "SERVICE_TOKEN_KEY")
    }
    return subprocess.run(
        [sys.executable, "-m", "uvicorn", "--factory", app, "--port", "0"],
        env={**base, "DATABASE_URL": "postgresql+asyncpg://u@127.0.0.1:1/x", **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_prod_refuses_development_secrets(attack: Attack, service: str) -> None:
    app, env, named = SERVICES[service]
    result = _start(app, {"ENVIRONMENT": "prod", **env})
    said = [n for n in named if n in result.stderr]
    attack(
        f"{service} started with ENVIRONMENT=prod and dev secrets",
        f"refuses, names {' '.join(named)}",
        f"exit {result.returncode}, names {' '.join(said) or 'nothing'}",
    )
    assert result.returncode != 0
    assert said == named
    assert "refuses to start" in result.stderr
