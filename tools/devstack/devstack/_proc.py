"""Helpers for the child processes devstack starts (brokers, services)."""

from __future__ import annotations

import os
import shutil
import signal
import sys
from collections.abc import Sequence
from pathlib import Path


def orphan_guarded(argv: Sequence[str]) -> list[str]:
    """`argv` wrapped so that the kernel SIGTERMs the child when its parent dies.

    Children run in their own session (so a terminal's Ctrl-C reaches only the supervisor,
    which then stops them one by one), so nothing else would stop them if the supervisor or
    pytest were killed: a leftover JVM on a 2-core machine slows every later run. util-linux's
    `setpriv` sets the parent-death signal and execs the command under the same pid, which a
    `preexec_fn` could only do unsafely in a process that has threads.
    """
    setpriv = shutil.which("setpriv")
    if setpriv is None or sys.platform != "linux":
        return list(argv)
    return [setpriv, "--pdeathsig", "TERM", "--", *argv]


def signal_group(pid: int, sig: signal.Signals) -> None:
    """Send a signal to the process group a child leads; no error if it is already gone."""
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass
    except PermissionError:
        # The group is gone and its id was reused by a group that is not ours.
        pass


def tail_lines(path: Path, count: int) -> list[str]:
    """The last `count` lines of a text file (empty when it does not exist)."""
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            # Log lines are short; the last 64 KiB hold far more than the lines we show.
            handle.seek(max(0, size - 65536))
            data = handle.read()
    except FileNotFoundError:
        return []
    return data.decode("utf-8", errors="replace").splitlines()[-count:]
