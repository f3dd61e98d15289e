"""Benchmark 7's accounting: the database server is part of the stack's footprint, and CPU
spent by children that have already ended (PostgreSQL's backends of closed connections)
still counts. No benchmark runs here: a shell stands in for the postmaster."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from benchkit.context import Context, Settings

BURN_S = 0.3


class _Stack:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir

    def status(self) -> dict[str, Any]:
        return {"processes": {}, "broker": {}}


def test_the_database_server_and_its_ended_backends_count(tmp_path: Path) -> None:
    # The "postmaster" runs a CPU-bound child to its end (and reaps it), then idles.
    burn = f"import time; t = time.process_time(); exec('while time.process_time() - t < {BURN_S}: pass')"
    postmaster = subprocess.Popen(
        ["sh", "-c", f'"{sys.executable}" -c "{burn}"; echo done; exec sleep 30'],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert postmaster.stdout is not None
        assert postmaster.stdout.readline().strip() == "done"  # the child has ended
        (tmp_path / "postgres").mkdir()
        (tmp_path / "postgres" / "postmaster.pid").write_text(f"{postmaster.pid}\n/data\n")
        ctx = Context(_Stack(tmp_path), None, Settings.make(quick=True), "tansu")
        assert ctx.database_pid() == postmaster.pid
        cpu = ctx.cpu_seconds()
        assert cpu["postgres"] >= BURN_S * 0.9
        assert ctx.rss_mb()["postgres"] > 0
    finally:
        postmaster.kill()
        postmaster.wait()


def test_no_database_server_is_no_entry(tmp_path: Path) -> None:
    ctx = Context(_Stack(tmp_path), None, Settings.make(quick=True), "tansu")
    assert ctx.database_pid() is None
    assert "postgres" not in ctx.cpu_seconds()
