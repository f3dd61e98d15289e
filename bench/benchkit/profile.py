"""Where the stack's CPU goes during a benchmark: py-spy samples each Python process.

`bench/run.py --profile` wraps the load of benchmarks 1 to 6 (which part of
each: bench/README.md) in `Profiler`: a `py-spy record` per service process, attached by
pid (no change to the services, nothing imported into them), writing collapsed stacks to
`<results>/profile/<benchmark>/<process>.txt` (flame-graph input: `flamegraph.pl`,
speedscope). The summary (`summarise`, pure and unit-tested in tests/bench) is a `Result`
of its own in the report: each process's share of a core, and the functions where its
samples are spent (`self`: the innermost frame; `ours`: inclusive, in the repository's own
packages).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import signal
import sys
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from .report import Result

RATE_HZ = 100
TOP = 6
# The repository's packages: an inclusive frame in one of them names our code's hot path.
OURS = (
    "gateway/",
    "records/",
    "scheduling/",
    "messaging/",
    "triage/",
    "ehr_connector/",
    "ehr_sandbox/",
    "servicekit/",
    "contracts/",
)
# Processes that are not Python (the broker is Rust or Java, PostgreSQL is C).
NOT_PYTHON = ("kafka", "postgres")
_LINE = re.compile(r":\d+\)$")


@dataclass
class Profile:
    """One process's samples, summarised."""

    samples: int
    self_top: list[tuple[str, float]] = field(default_factory=list)  # frame, share
    ours_top: list[tuple[str, float]] = field(default_factory=list)


def summarise_file(path: Path, top: int = TOP) -> Profile:
    """`summarise` a py-spy output file. py-spy now and then writes a line of garbage (a
    frame it read while the process changed it; seen in the sandbox's profile under
    benchmark 1): its bytes are replaced, and the line counts as one odd frame."""
    with path.open(encoding="utf-8", errors="replace") as lines:
        return summarise(lines, top=top)


def _frame(raw: str) -> str:
    """`handle (gateway/api/me.py:143)` -> `handle (gateway/api/me.py)`: one entry per
    function, whichever line was running."""
    return _LINE.sub(")", raw.strip())


def summarise(collapsed: Iterable[str], top: int = TOP) -> Profile:
    """py-spy's raw output (`frame;frame;...;innermost count` per line, outermost first)
    as the `top` innermost functions and the `top` functions of our packages by the share
    of samples they are on the stack for (each counted once per sample)."""
    self_counts: Counter[str] = Counter()
    ours_counts: Counter[str] = Counter()
    total = 0
    for line in collapsed:
        stack, _, count_text = line.rstrip("\n").rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [_frame(f) for f in stack.split(";") if f.strip()]
        if not frames:
            continue
        self_counts[frames[-1]] += count
        for name in set(frames):
            if any(f"({package}" in name for package in OURS):
                ours_counts[name] += count
    if total == 0:
        return Profile(0)

    def shares(counts: Counter[str]) -> list[tuple[str, float]]:
        return [(name, round(n / total, 3)) for name, n in counts.most_common(top)]

    return Profile(total, shares(self_counts), shares(ours_counts))


def as_result(
    section: str,
    profiles: dict[str, Profile],
    window_s: float,
    rate_hz: int,
    of: str,
    missing: Iterable[str] = (),
) -> Result:
    """The profiles of one benchmark's load (`section`: `m1`, `m4`) as a report section of
    its own: each process's CPU (in cores, from its samples) and, in the notes, where it
    went."""
    figures: dict[str, float] = {}
    notes = [
        f"py-spy at {rate_hz} Hz on each Python process for {window_s:.0f} s of {of}; "
        "'cores' = samples / rate / window (idle threads are not sampled). 'self': the "
        "innermost function; 'ours': our functions on the stack (inclusive). Collapsed "
        f"stacks in profile/{section}/<process>.txt."
    ]
    for name, profile in sorted(profiles.items(), key=lambda item: -item[1].samples):
        figures[f"cores.{name}"] = round(profile.samples / rate_hz / max(window_s, 1e-9), 2)
        if not profile.samples:
            continue
        self_part = "; ".join(f"{share:.0%} {frame}" for frame, share in profile.self_top)
        ours_part = "; ".join(f"{share:.0%} {frame}" for frame, share in profile.ours_top)
        notes.append(f"{name}: self: {self_part}. ours: {ours_part}.")
    for name in missing:
        notes.append(f"{name}: not profiled (py-spy's reason in profile/{section}/{name}.err)")
    return Result(
        name=f"{section}_profile",
        title=f"Profile of benchmark {section.removeprefix('m')} (py-spy)",
        config={"rate_hz": rate_hz, "window_s": round(window_s, 1)},
        figures=figures,
        baseline={},
        notes=notes,
    )


def py_spy() -> str:
    """The py-spy executable beside this interpreter (the dev requirements install it)."""
    beside = Path(sys.executable).parent / "py-spy"
    found = str(beside) if beside.exists() else shutil.which("py-spy")
    if found is None:
        raise RuntimeError("py-spy is not installed: make install (requirements-dev.txt)")
    return found


class Profiler:
    """`py-spy record` on each given process until `stop()`; then the summaries. One
    section (one benchmark's load) at a time, each in a directory of its own."""

    def __init__(self, root: Path, rate_hz: int = RATE_HZ) -> None:
        self.root = root
        self.section = ""
        self.rate_hz = rate_hz
        self._running: dict[str, asyncio.subprocess.Process] = {}
        self._started = 0.0
        self.window_s = 0.0
        self.missing: list[str] = []  # processes py-spy wrote no profile of

    @property
    def out_dir(self) -> Path:
        return self.root / self.section

    async def start(self, section: str, pids: dict[str, int]) -> None:
        """Sample each of `pids`' Python processes for `section` (a benchmark: `m1`)."""
        await self.stop()  # one section at a time
        self.section = section
        self.missing = []
        self.out_dir.mkdir(parents=True, exist_ok=True)
        executable = py_spy()
        for name, pid in pids.items():
            if name in NOT_PYTHON:
                continue
            # py-spy's stderr says why a process could not be sampled (ptrace permission).
            with (self.out_dir / f"{name}.err").open("wb") as err:
                self._running[name] = await asyncio.create_subprocess_exec(
                    executable,
                    "record",
                    "--pid",
                    str(pid),
                    "--rate",
                    str(self.rate_hz),
                    # Sample without pausing the process: a paused service would be slower,
                    # the very thing being measured.
                    "--nonblocking",
                    "--format",
                    "raw",
                    "--output",
                    str(self.out_dir / f"{name}.txt"),
                    stdout=asyncio.subprocess.DEVNULL,
                    stderr=err,
                )
        self._started = time.monotonic()

    async def stop(self) -> dict[str, Profile]:
        """End the recordings (py-spy writes its file on SIGINT) and summarise them; nothing
        when none runs."""
        if not self._running:
            return {}
        self.window_s = time.monotonic() - self._started
        for process in self._running.values():
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGINT)
        profiles: dict[str, Profile] = {}
        for name, process in self._running.items():
            try:
                await asyncio.wait_for(process.wait(), 30)
            except TimeoutError:
                process.kill()
                await process.wait()
            path = self.out_dir / f"{name}.txt"
            if path.exists():
                profiles[name] = summarise_file(path)
            else:
                self.missing.append(name)
        self._running.clear()
        return profiles

    async def result(self, of: str) -> Result:
        """Stop, and the summaries as a report section (`of`: what ran meanwhile)."""
        profiles = await self.stop()
        return as_result(self.section, profiles, self.window_s, self.rate_hz, of, self.missing)
