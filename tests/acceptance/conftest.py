"""Fixtures of the acceptance suite: one stack for the whole suite, started as `make up`
starts it (Tansu + embedded PostgreSQL by default; ACCEPTANCE_KAFKA=apache for Apache
Kafka), the clinic's client and the patients' clients.

The per-journey table is printed at the end of the session and written to
`<stack data dir>/journeys.json` (ACCEPTANCE_REPORT names another file).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from .checker import table
from .portal import Clinic
from .stack import LocalStack, StackFailed

ROWS: list[dict[str, Any]] = []
OUTCOMES: dict[str, str] = {}


@pytest.fixture(scope="session")
def stack() -> Iterator[LocalStack]:
    """The whole stack, as `make up` runs it, for the session."""
    kind = os.environ.get("ACCEPTANCE_KAFKA", "tansu")
    data_dir = Path(tempfile.mkdtemp(prefix="portal-acceptance-"))
    local = LocalStack(data_dir, kafka=kind)
    try:
        local.start()
    except StackFailed as exc:
        local.stop()
        pytest.fail(f"the stack did not start: {exc}", pytrace=False)
    try:
        yield local
    finally:
        local.stop()
        keep = os.environ.get("ACCEPTANCE_KEEP_LOGS")
        if keep:
            shutil.copy(local.log_path, keep)
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest_asyncio.fixture(loop_scope="session", scope="session")
async def clinic(stack: LocalStack) -> AsyncIterator[Clinic]:
    """The clinic's side: the sandbox's simulator and FHIR API with the admin token."""
    async with Clinic() as client:
        await client.wait_subscriptions_active()
        yield client


def record(row: dict[str, Any]) -> None:
    """Add a journey's row to the report."""
    ROWS.append(row)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Remember each journey's outcome (a failed set-up or teardown fails it too)."""
    if "acceptance" not in report.nodeid:
        return
    if report.failed:
        OUTCOMES[report.nodeid] = "failed"
    elif OUTCOMES.get(report.nodeid) != "failed" and (report.when == "call" or report.skipped):
        OUTCOMES[report.nodeid] = report.outcome


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Print the per-journey table; write it as JSON for `make reliability-report`."""
    if ROWS:
        terminalreporter.section("acceptance journeys")
        terminalreporter.write_line(table(ROWS))
    target = os.environ.get("ACCEPTANCE_REPORT")
    if target:
        outcomes = list(OUTCOMES.values())
        summary = {"rows": ROWS, "passed": outcomes.count("passed"), "tests": len(outcomes)}
        Path(target).write_text(json.dumps(summary, indent=2) + "\n")
