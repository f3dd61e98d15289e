"""`python -m ehr_sandbox ...` drives a sandbox served over real HTTP."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from ehr_sandbox.app import create_app
from ehr_sandbox.auth.settings import AuthSettings
from ehr_sandbox.dev.cli import main
from ehr_sandbox.settings import SandboxSettings
from ehr_sandbox.testing import database_for
from ehr_sandbox.testing.http import free_port, serve

TOKEN = "cli-admin-token"


async def test_cli_simulates_and_sets_faults(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    settings = SandboxSettings(
        database_url=await database_for(tmp_path),
        admin_token=TOKEN,
        base_url=url,
        log_format="console",
        log_level="WARNING",
    )
    app = create_app(settings)
    app.state.auth_settings = AuthSettings(data_dir=tmp_path / "auth")
    common = ["--url", url, "--token", TOKEN]
    async with serve(app, port):
        code = await asyncio.to_thread(
            main,
            [
                *common,
                "simulate",
                "lab-result",
                "--patient",
                "demo-bob",
                "-s",
                "panel=a1c",
                "-s",
                "abnormal=true",
            ],
        )
        assert code == 0
        written = json.loads(capsys.readouterr().out)["written"]
        assert [w["reference"].split("/")[0] for w in written] == [
            "Observation",
            "DiagnosticReport",
        ]

        assert await asyncio.to_thread(main, [*common, "faults", "set", '{"latency_ms": 1}']) == 0
        assert json.loads(capsys.readouterr().out)["latency_ms"] == 1
        assert await asyncio.to_thread(main, [*common, "faults", "reset"]) == 0
        assert json.loads(capsys.readouterr().out)["latency_ms"] == 0

        assert await asyncio.to_thread(main, [*common, "patients"]) == 0
        assert "demo-alice" in capsys.readouterr().out

        failed = await asyncio.to_thread(
            main, [*common, "simulate", "lab-result", "--patient", "nobody"]
        )
        assert failed == 1
        assert "OperationOutcome" in capsys.readouterr().err
        wrong_token = await asyncio.to_thread(
            main, ["--url", url, "--token", "x", "faults", "show"]
        )
        assert wrong_token == 1


def test_cli_reports_an_unreachable_sandbox(capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()
    assert main(["--url", f"http://127.0.0.1:{port}", "--timeout", "2", "patients"]) == 1
    assert "cannot reach" in capsys.readouterr().err
