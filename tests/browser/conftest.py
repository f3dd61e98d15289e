"""Fixtures of the browser journeys: the whole stack (started once per module, every
boundary real), Debian's Chromium driven by Playwright, axe-core for accessibility checks,
and screenshots of every screen.

Chromium is Debian's (`apt-get install -y chromium`; Playwright's own browser download is
never used) and axe-core comes from npm (`make install` puts it in tests/browser/.node).
Either missing fails the tests with how to install it: they are part of `make test`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from playwright.async_api import Browser, async_playwright

from devstack.postgres import create_database, drop_database

from .stack import Stack, running_stack

CHROMIUM = os.environ.get("PORTAL_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ROOT = Path(__file__).resolve().parents[2]
AXE_JS = ROOT / "tests/browser/.node/node_modules/axe-core/axe.min.js"
SCREENSHOTS = Path(os.environ.get("PORTAL_SCREENSHOTS", ROOT / ".artifacts/portal-screenshots"))


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def stack(postgres_url: str, kafka_bootstrap: str) -> AsyncIterator[Stack]:
    """The whole stack, shared by the journeys of one module (each uses its own patient
    or its own data, so they do not depend on each other's order)."""
    names: list[str] = []

    async def make_database() -> str:
        name = f"test_{uuid.uuid4().hex[:12]}"
        names.append(name)
        return await create_database(name, postgres_url)

    data_dir = Path(tempfile.mkdtemp(prefix="portal-browser-"))
    prefix = f"t{uuid.uuid4().hex[:8]}."
    try:
        async with running_stack(data_dir, make_database, kafka_bootstrap, prefix) as s:
            yield s
    finally:
        for name in names:
            await drop_database(name, postgres_url)
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def browser() -> AsyncIterator[Browser]:
    """Debian's Chromium, headless."""
    if not os.path.exists(CHROMIUM):  # noqa: ASYNC240 - once, before anything starts
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium", pytrace=False)
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield launched
        finally:
            await launched.close()


@pytest.fixture(scope="session")
def axe_source() -> str:
    """axe-core's script, to inject into pages."""
    if not AXE_JS.exists():
        pytest.fail(f"{AXE_JS} is missing: run `make install` (needs npm)", pytrace=False)
    return AXE_JS.read_text(encoding="utf-8")


@pytest.fixture(scope="session")
def screenshots() -> Path:
    """Where screenshots go (a CI artefact folder, git-ignored)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    return SCREENSHOTS
