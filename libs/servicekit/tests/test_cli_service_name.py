"""`python -m servicekit relay|replay` act on one named service's outbox: without the name
(or without its database) they refuse clearly and create nothing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.parametrize(
    ("argv", "env", "expected"),
    [
        (["replay", "--since", "2026-11-25T10:00:00+00:00"], {}, "needs the service name"),
        (["relay"], {}, "needs the service name"),
        (
            ["replay", "--service", "records", "--since", "2026-11-25T10:00:00+00:00"],
            {},
            "needs DATABASE_URL",
        ),
        (["relay"], {"SERVICE_NAME": "records"}, "needs DATABASE_URL"),
    ],
)
def test_operator_commands_refuse_without_service_and_database(
    tmp_path: Path, argv: list[str], env: dict[str, str], expected: str
) -> None:
    clean = {k: v for k, v in os.environ.items() if k not in ("SERVICE_NAME", "DATABASE_URL")}
    done = subprocess.run(
        [sys.executable, "-m", "servicekit", *argv],
        env={**clean, **env},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert expected in done.stderr
    assert list(tmp_path.iterdir()) == [], "no stray database or data folder"
