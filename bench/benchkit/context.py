"""What every benchmark gets: the running stack, the clinic, signed-in patients, settings."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
from prometheus_client.parser import text_string_to_metric_families

from devstack.brokers import ApacheKafkaBroker, TansuBroker
from servicekit.settings import ServiceSettings

from .acceptance import Clinic, LocalStack, Patient
from .profile import Profiler

BOOTSTRAP = "127.0.0.1:9092"  # the stack's broker (DESIGN: fixed port)
CONNECTOR = "http://127.0.0.1:8005"  # the ehr-connector (DESIGN: fixed port)
# The stack runs with the development defaults: the ops token is the kit's.
DEV_OPS_TOKEN = ServiceSettings.model_fields["ops_token"].default


@dataclass
class Settings:
    """The sizes of a run: the issue's full run, or the 10-second development run."""

    quick: bool
    duration_s: float
    patients: int
    lab_rate: float
    load_clients: int
    bookers: int
    preload_events: int
    drain_limit_s: float

    @classmethod
    def make(cls, quick: bool) -> Settings:
        if quick:
            return cls(quick, 10.0, 40, 10.0, 100, 10, 1000, 40.0)
        return cls(quick, 60.0, 200, 50.0, 100, 20, 20_000, 300.0)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


async def histogram_totals(base_url: str, family: str) -> tuple[float, float]:
    """A histogram's count and sum over all its labels, from a service's /metrics."""
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        response = await client.get("/metrics")
    response.raise_for_status()
    count = total = 0.0
    for metric in text_string_to_metric_families(response.text):
        if metric.name != family:
            continue
        for sample in metric.samples:
            if sample.name.endswith("_count"):
                count += sample.value
            elif sample.name.endswith("_sum"):
                total += sample.value
    return count, total


async def sign_in(clinic: Any, fhir_id: str, tries: int = 3) -> Any:
    """`Patient.sign_in`, again after a 503 (the gateway's EHR check timed out on a busy
    machine and said "try again"), as a patient's app would."""
    for attempt in range(1, tries + 1):
        try:
            return await Patient.sign_in(clinic, fhir_id)
        except AssertionError as exc:
            if '"status":503' not in str(exc) or attempt == tries:
                raise
            await asyncio.sleep(attempt)
    raise AssertionError("unreachable")


@dataclass
class Context:
    """The stack and its clients for one run."""

    stack: Any  # LocalStack (loaded from tests/acceptance)
    clinic: Any  # Clinic
    settings: Settings
    kafka: str
    patients: list[Any] = field(default_factory=list)  # Patient, each with an open stream
    # Results a benchmark measured on the side (benchmark 1 measures the footprint too).
    extra_results: list[Any] = field(default_factory=list)
    # `--profile`: benchmark 1's load runs under py-spy.
    profiler: Profiler | None = None
    # `--traces`: where the slowest traces of each benchmark go (the stack runs the sink).
    traces_dir: Path | None = None

    @property
    def fetch_max_wait_ms(self) -> int:
        """The fetch wait of the stack's consumers a patient waits on (interactive ones:
        `KAFKA_INTERACTIVE_FETCH_MAX_WAIT_MS`, which the local stack sets per broker): the
        baselines' consumers, standing in for those hops, fetch the same way."""
        broker = {"tansu": TansuBroker, "apache": ApacheKafkaBroker}[self.kafka]
        default: int = ServiceSettings.model_fields["kafka_fetch_max_wait_ms"].default
        return broker.interactive_fetch_wait_ms or default

    async def sign_in_patients(self, count: int) -> list[Any]:
        """New EHR patients, signed in to the portal with their streams open (kept for the
        run: later benchmarks reuse them)."""
        semaphore = asyncio.Semaphore(8)

        async def one(n: int) -> Any:
            async with semaphore:
                fhir_id = await self.clinic.new_patient(f"Bench{n:04d}")
                patient = await sign_in(self.clinic, fhir_id)
                await patient.open_stream()
                return patient

        start = len(self.patients)
        self.patients += await asyncio.gather(*(one(n) for n in range(start, count)))
        await settle_backfills(self.patients[start:count])
        return self.patients[:count]

    def pid(self, name: str) -> int | None:
        """The pid of a process of the stack ("kafka": the broker)."""
        status = self.stack.status()
        entry = (
            status.get("broker", {})
            if name == "kafka"
            else status.get("processes", {}).get(name, {})
        )
        pid = entry.get("pid")
        return int(pid) if pid else None

    def pids(self) -> dict[str, int]:
        """Every process of the stack with its pid."""
        status = self.stack.status()
        found = {
            name: int(entry["pid"])
            for name, entry in status.get("processes", {}).items()
            if entry.get("pid")
        }
        broker = status.get("broker", {}).get("pid")
        if broker:
            found["kafka"] = int(broker)
        return found

    def database_pid(self) -> int | None:
        """The embedded PostgreSQL server's postmaster (its first `postmaster.pid` line),
        when the stack runs one: its backends do much of the stack's work."""
        pid_file = Path(self.stack.data_dir) / "postgres" / "postmaster.pid"
        try:
            first = pid_file.read_text().split("\n", 1)[0].strip()
        except OSError:
            return None
        return int(first) if first.isdigit() else None

    def processes(self) -> dict[str, psutil.Process]:
        """Each process of the stack (the services, the broker and the database server)."""
        pids = self.pids()
        database = self.database_pid()
        if database is not None:
            pids["postgres"] = database
        found: dict[str, psutil.Process] = {}
        for name, pid in pids.items():
            try:
                found[name] = psutil.Process(pid)
            except psutil.Error:
                continue
        return found

    def _per_process(
        self,
        read: Callable[[psutil.Process], float],
        own: Callable[[psutil.Process], float] | None = None,
    ) -> dict[str, float]:
        """`read` summed over each process of the stack and its children (a service may
        fork workers; PostgreSQL forks a backend per connection), `own` (default: `read`)
        for the process itself; a process gone meanwhile counts nothing."""
        totals: dict[str, float] = {}
        for name, process in self.processes().items():
            try:
                children = process.children(recursive=True)
            except psutil.Error:
                children = []
            total = 0.0
            for member, reader in ((process, own or read), *((c, read) for c in children)):
                try:
                    total += reader(member)
                except psutil.Error:
                    continue
            totals[name] = total
        return totals

    def rss_mb(self) -> dict[str, float]:
        """Resident memory per process of the stack (with its children), in MB."""
        sizes = self._per_process(lambda p: float(p.memory_info().rss))
        return {name: round(total / 2**20, 1) for name, total in sizes.items()}

    def cpu_seconds(self) -> dict[str, float]:
        """User + system CPU seconds per process of the stack: its own, its live
        children's, and those of its children that have ended (PostgreSQL's backends of
        closed connections)."""
        return self._per_process(
            lambda p: float(sum(p.cpu_times()[:2])),
            own=lambda p: float(sum(p.cpu_times()[:4])),
        )

    def pause(self, name: str, paused: bool) -> None:
        """SIGSTOP / SIGCONT a process group of the stack (down without the supervisor
        restarting it: the process is alive, it just answers nothing)."""
        pid = self.pid(name)
        if pid is None:
            raise RuntimeError(f"no pid for {name}")
        os.killpg(pid, signal.SIGSTOP if paused else signal.SIGCONT)

    @contextlib.asynccontextmanager
    async def slowed(self, name: str, stopped_s: float, running_s: float) -> AsyncIterator[None]:
        """Make a process of the stack slow, not down: stopped for `stopped_s`, then running
        for `running_s`, over and over (a request it gets waits up to `stopped_s` more, as
        behind a long pause or a starved CPU); running again when the block ends."""

        async def cycle() -> None:
            while True:
                self.pause(name, True)
                try:
                    await asyncio.sleep(stopped_s)
                finally:
                    self.pause(name, False)
                await asyncio.sleep(running_s)

        task = asyncio.create_task(cycle())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            self.pause(name, False)

    async def close(self) -> None:
        if self.profiler is not None:
            await self.profiler.stop()  # a benchmark that failed midway left it running
        for patient in self.patients:
            await patient.close()


__all__ = ["BOOTSTRAP", "Clinic", "Context", "LocalStack", "Settings"]


async def settle_backfills(patients: list[Any], timeout_s: float = 120.0) -> None:
    """Wait until the back-fill each new patient's first sign-in queued has ended.

    A benchmark that measures live traffic must not measure it beside 40 history imports
    (benchmark 5 measures exactly that, on purpose): the connector's ops endpoint says when
    each patient's back-fill is done. A patient whose back-fill is not queued yet (the
    `patient.linked` event still on its way) is asked again."""
    deadline = time.monotonic() + timeout_s
    headers = {"Authorization": f"Bearer {DEV_OPS_TOKEN}"}
    async with httpx.AsyncClient(base_url=CONNECTOR, headers=headers, timeout=30) as ops:
        for patient in patients:
            portal_id = (await patient.get("/v1/me"))["patient_id"]
            while True:
                response = await ops.get(f"/ops/backfill/{portal_id}")
                if response.status_code == 200 and response.json()["state"] in ("done", "failed"):
                    break
                if response.status_code not in (200, 404):
                    status = f"{response.status_code} {response.text}"
                    raise AssertionError(f"back-fill progress: {status}")
                if time.monotonic() > deadline:
                    raise AssertionError(f"back-fills still running after {timeout_s:.0f} s")
                await asyncio.sleep(0.2)
