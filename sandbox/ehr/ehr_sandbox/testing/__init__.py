"""Test support: a sandbox app on the test PostgreSQL, driven in-process through httpx.

`running(tmp_path, **settings)` starts the app (lifespan included) and yields a `Sandbox`
with an admin client and assertion helpers. It lives in the package, beside `httptest`,
because test modules run with `--import-mode=importlib` and cannot import a conftest.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from asgi_lifespan import LifespanManager
from fastapi import FastAPI

from ehr_sandbox.app import create_app
from ehr_sandbox.auth.settings import AuthSettings
from ehr_sandbox.settings import SandboxSettings

ADMIN_TOKEN = "test-admin-token"  # noqa: S105 - a fixed token for in-process tests
BASE_URL = "http://127.0.0.1:8090"
FHIR_JSON = {"Content-Type": "application/fhir+json"}


@dataclass
class Sandbox:
    """A running in-process sandbox, an admin client on it, and assertion helpers.

    The helpers are methods because test modules cannot import this conftest
    (`--import-mode=importlib`).
    """

    app: FastAPI
    client: httpx.AsyncClient
    settings: SandboxSettings

    async def follow(self, url: str) -> httpx.Response:
        """GET a Bundle link (absolute URLs carry the configured base URL)."""
        assert url.startswith(BASE_URL), url
        return await self.client.get(url[len(BASE_URL) :])

    @staticmethod
    def link(bundle: dict[str, Any], relation: str) -> str | None:
        """The URL of a Bundle link by relation, if present."""
        for entry in bundle.get("link", []):
            if entry["relation"] == relation:
                url: str = entry["url"]
                return url
        return None

    @staticmethod
    def outcome(response: httpx.Response) -> dict[str, Any]:
        """Assert `response` is an OperationOutcome in FHIR JSON; return it."""
        content_type = response.headers["content-type"]
        assert content_type.startswith("application/fhir+json"), content_type
        body: dict[str, Any] = response.json()
        assert body["resourceType"] == "OperationOutcome", body
        assert body["issue"], body
        return body

    @staticmethod
    def diagnostics(outcome: dict[str, Any]) -> str:
        """Every issue's diagnostics and expressions, joined, for assertions."""
        parts = []
        for issue in outcome["issue"]:
            parts.append(issue.get("diagnostics", ""))
            parts.extend(issue.get("expression", []))
        return " | ".join(parts)

    async def create(self, resource: dict[str, Any]) -> dict[str, Any]:
        """POST `resource` and return the created resource (asserts 201)."""
        response = await self.client.post(
            f"/fhir/{resource['resourceType']}", json=resource, headers=FHIR_JSON
        )
        assert response.status_code == 201, response.text
        body: dict[str, Any] = response.json()
        return body

    async def put(self, resource: dict[str, Any]) -> dict[str, Any]:
        """PUT `resource` at its id and return what the server stored (asserts 2xx)."""
        response = await self.client.put(
            f"/fhir/{resource['resourceType']}/{resource['id']}", json=resource, headers=FHIR_JSON
        )
        assert response.status_code in (200, 201), response.text
        body: dict[str, Any] = response.json()
        return body

    async def search(self, path: str, **params: Any) -> dict[str, Any]:
        """GET a search and return the Bundle (asserts 200)."""
        response = await self.client.get(path, params=params)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    @staticmethod
    def ids(bundle: dict[str, Any], mode: str = "match") -> list[str]:
        """Ids of the entries of a Bundle with search mode `mode`."""
        return [
            e["resource"]["id"]
            for e in bundle.get("entry", [])
            if e.get("search", {}).get("mode") == mode
        ]


async def database_for(data_dir: Path) -> str:
    """A PostgreSQL database of the test server for one data directory (created once).

    The server is the one the tests use (TEST_DATABASE_URL, which the root conftest sets to
    its embedded server for the session). One database per directory, so a test that starts
    the sandbox twice on one directory sees its data again, as after a restart.
    """
    from devstack.postgres import create_database

    server = os.environ.get("TEST_DATABASE_URL")
    if not server:
        raise RuntimeError(
            "no test PostgreSQL: TEST_DATABASE_URL is unset (the root conftest sets it; "
            "run the tests with pytest from the repository)"
        )
    name = "sbx_" + hashlib.sha256(str(data_dir).encode()).hexdigest()[:20]
    return await create_database(name, server)


@asynccontextmanager
async def running(tmp_path: Path, **overrides: Any) -> AsyncIterator[Sandbox]:
    """Start a sandbox on the test PostgreSQL (a database for `tmp_path`) with `overrides`
    of its settings."""
    values: dict[str, Any] = {
        "database_url": overrides.pop("database_url", None) or await database_for(tmp_path),
        "admin_token": ADMIN_TOKEN,
        "seed": False,
        "base_url": BASE_URL,
        "log_format": "console",
        "log_level": "WARNING",
    }
    values.update(overrides)
    settings = SandboxSettings(**values)
    app = create_app(settings)
    # The auth server keeps its signing keys under its data dir: keep them in the test's.
    app.state.auth_settings = AuthSettings(data_dir=tmp_path / "auth")
    async with LifespanManager(app, startup_timeout=60) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(
            transport=transport,
            base_url=BASE_URL,
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        ) as client:
            yield Sandbox(app, client, settings)


def patient(family: str = "Testperson", given: str = "Ann", **extra: Any) -> dict[str, Any]:
    """A minimal valid Patient."""
    return {"resourceType": "Patient", "name": [{"family": family, "given": [given]}], **extra}
