"""`devstack up` as a process: summary, Ctrl-C/SIGTERM stops one by one, dying services."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

from devstack._paths import free_port

RUN_STACK = Path(__file__).parent / "fakeapps" / "run_stack.py"


async def _start(tmp_path: Path, *services: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        str(RUN_STACK),
        "19097",
        *services,
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )


async def _read_until(proc: asyncio.subprocess.Process, marker: str, seen: list[str]) -> None:
    assert proc.stdout is not None
    async with asyncio.timeout(60):
        while True:
            raw = await proc.stdout.readline()
            if not raw:
                raise AssertionError("stack exited early:\n" + "\n".join(seen))
            seen.append(raw.decode().rstrip("\n"))
            if marker in seen[-1]:
                return


def _order(lines: list[str], event: str) -> list[str]:
    found = []
    for line in lines:
        parts = line.partition("| ")[2].split()
        if len(parts) == 3 and parts[0] == event:
            found.append(parts[1])
    return found


async def test_sigint_stops_the_services_one_by_one_then_the_broker(tmp_path: Path) -> None:
    front, back = free_port(), free_port()
    proc = await _start(
        tmp_path, f"front={front}:FAKE_STOP_DELAY=0.3", f"back={back}:FAKE_STOP_DELAY=0.3"
    )
    lines: list[str] = []
    await _read_until(proc, "Press Ctrl-C to stop.", lines)
    text = "\n".join(lines)
    assert f"front          http://127.0.0.1:{front}/docs" in text
    # The AsyncAPI document is the repository's file (none in this temporary root).
    assert "AsyncAPI:     none published" in text
    assert "Kafka:        127.0.0.1:19097 (tansu)" in text

    proc.send_signal(signal.SIGINT)
    assert proc.stdout is not None
    rest, _ = await asyncio.wait_for(proc.communicate(), 60)
    lines += rest.decode().splitlines()
    assert proc.returncode == 0, "\n".join(lines)
    assert _order(lines, "shutdown-begin") == ["back", "front"]
    stopping = [line for line in lines if "stopping" in line and line.startswith("devstack")]
    assert [line.split("stopping ")[1] for line in stopping[-4:]] == [
        "back",
        "front",
        "tansu broker",
        "PostgreSQL",
    ]


async def test_a_service_that_dies_is_restarted_while_the_stack_runs_on(tmp_path: Path) -> None:
    proc = await _start(
        tmp_path, f"first={free_port()}", f"second={free_port()}:FAKE_EXIT_AFTER=1.5"
    )
    lines: list[str] = []
    # The driver gives FAKE_EXIT_AFTER to both fakes: each dies and comes back.
    await _read_until(proc, "exited with code 4; restarting in 1 s (restart 1)", lines)
    await _read_until(proc, "is ready again on", lines)
    proc.send_signal(signal.SIGINT)
    rest, _ = await asyncio.wait_for(proc.communicate(), 60)
    text = "\n".join(lines) + rest.decode()
    assert proc.returncode == 0, text
    assert "stopping tansu broker" in text
