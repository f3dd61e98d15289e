"""Fixtures of the EHR sandbox's REST tests (helpers live in `ehr_sandbox.testing`).

`sandbox` is an empty sandbox (no seed: fast); `fhir` is its admin client; `seeded` is one
seeded sandbox shared by the tests of a module (seed, dev API and simulator tests).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from ehr_sandbox.testing import Sandbox, running


@pytest.fixture
async def sandbox(tmp_path: Path) -> AsyncIterator[Sandbox]:
    """An empty sandbox (no seed)."""
    async with running(tmp_path) as box:
        yield box


@pytest.fixture
def fhir(sandbox: Sandbox) -> httpx.AsyncClient:
    """Admin client of an empty sandbox."""
    return sandbox.client


@pytest.fixture(scope="module")
async def seeded(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Sandbox]:
    """A seeded sandbox shared by the tests of one module."""
    async with running(tmp_path_factory.mktemp("seeded"), seed=True) as box:
        yield box
