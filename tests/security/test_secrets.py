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
        if k
        not in (
            "OPS_TOKEN",
            "ENVIRONMENT",
            "SERVICE_TOKEN_KEY",
            "ENCRYPTION_KEYS",
            "ENCRYPTION_KEYS_FILE",
        )
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


@pytest.mark.parametrize(
    "app", ["records.app:create_app", "scheduling.app:create_app", "gateway.app:create_app"]
)
def test_prod_refuses_to_start_without_encryption_keys(attack: Attack, app: str) -> None:
    """Every secret set but the keys that seal the kit's tables (dead letters, parked
    events, outbox): the service refuses rather than sealing with the development key."""
    env = {
        "ENVIRONMENT": "prod",
        "OPS_TOKEN": "a-long-production-ops-token-0123456789",
        "SERVICE_TOKEN_KEY": "a-long-production-service-token-key-0123456789",
        "AUDIT_KEY": "a-long-production-audit-key-0123456789",
    }
    result = _start(app, env)
    attack(
        f"{app.split('.')[0]} started with ENVIRONMENT=prod and no encryption keys",
        "refuses, names ENCRYPTION_KEYS",
        f"exit {result.returncode}",
    )
    assert result.returncode != 0
    assert "ENCRYPTION_KEYS must be set in production" in result.stderr
