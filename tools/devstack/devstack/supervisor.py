"""The local stack supervisor behind `python -m devstack up` and `check`.

Starts PostgreSQL (embedded, under `.data/postgres`, unless DATABASE_URL names a server) with
one database per process, the broker, creates the topics, then starts the EHR sandbox and
the six services as uvicorn processes and waits for each one's `GET /readyz`. Every output
line is prefixed (and coloured on a terminal) with the process name.

While the stack runs, a process that dies is restarted with back-off (1 s doubling to 30 s,
reset once it has stayed up a minute) while the others keep running; a broker that dies is
restarted too and its topics are created again (Tansu comes back empty: the services' relays
republish what it lost). `.data/stack.json` shows every process's pid, state and restarts.
Stopping is one process at a time, in reverse start order, then the broker, then PostgreSQL:
Tansu wedges a consumer group when two of its members leave at the same moment.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO
from urllib.parse import urlsplit

import asyncpg  # type: ignore[import-untyped]
import httpx
from aiokafka.errors import KafkaError

from devstack._paths import port_is_open, repo_root
from devstack._proc import orphan_guarded, signal_group
from devstack.brokers import Broker, BrokerKind, make_broker
from devstack.postgres import EmbeddedPostgres, create_database, database_url
from devstack.topics import ensure_topics

_COLOURS = ("36", "33", "32", "35", "34", "31", "96", "93", "92", "95", "94", "91")
_RESET = "\033[0m"
LAST_LINES = 40


# How long a service keeps an idle keep-alive connection open. Longer than any client keeps
# one (httpx: 5 s; proxies and load balancers: 60 s): at uvicorn's default 5 s, a client
# reusing a connection the moment the service closed it got "Server disconnected without
# sending a response" (the benchmarks' sign-ins and gateway load met it). The closing side
# must be the client, which never sends on a connection it is closing.
SERVER_KEEP_ALIVE_S = 75


@dataclass(frozen=True)
class ServiceDef:
    """One process of the local stack."""

    name: str
    package: str
    port: int
    app: str
    optional: bool = False
    is_service: bool = True
    database_env: str = "DATABASE_URL"


def _service(name: str, package: str, port: int) -> ServiceDef:
    return ServiceDef(name=name, package=package, port=port, app=f"{package}.app:create_app")


EHR_SANDBOX = ServiceDef(
    name="ehr-sandbox",
    package="ehr_sandbox",
    port=8090,
    app="ehr_sandbox.app:create_app",
    optional=True,
    is_service=False,
    database_env="SANDBOX_DATABASE_URL",
)
SERVICES: tuple[ServiceDef, ...] = (
    _service("gateway", "gateway", 8000),
    _service("records", "records", 8001),
    _service("scheduling", "scheduling", 8002),
    _service("messaging", "messaging", 8003),
    _service("triage", "triage", 8004),
    _service("ehr-connector", "ehr_connector", 8005),
)
DEFAULT_STACK: tuple[ServiceDef, ...] = (EHR_SANDBOX, *SERVICES)


class StartupError(RuntimeError):
    """A process of the stack died or did not become ready while the stack was starting."""

    def __init__(self, name: str, reason: str, lines: Sequence[str] = ()) -> None:
        self.name = name
        self.reason = reason
        self.lines = list(lines)
        text = f"{name}: {reason}"
        if self.lines:
            text += f"\nlast {len(self.lines)} lines of {name}:\n" + "\n".join(self.lines)
        super().__init__(text)


@dataclass(frozen=True)
class ProcessSpec:
    """How to run one HTTP process and where to ask it whether it is ready."""

    name: str
    argv: Sequence[str]
    port: int
    env: Mapping[str, str] = field(default_factory=dict)
    host: str = "127.0.0.1"
    ready_path: str = "/readyz"
    cwd: Path | None = None

    def url(self, path: str = "") -> str:
        """An URL on this process."""
        return f"http://{self.host}:{self.port}{path}"


class Output:
    """Writes lines prefixed with the name of the process they come from."""

    def __init__(self, sink: TextIO | None = None, colour: bool | None = None) -> None:
        self.sink = sink if sink is not None else sys.stdout
        if colour is None:
            colour = self.sink.isatty() and not os.environ.get("NO_COLOR")
        self.colour = colour
        self.width = 12
        self._colours: dict[str, str] = {}

    def fit(self, names: Sequence[str]) -> None:
        """Align the prefixes to the longest of these names."""
        self.width = max([self.width, *(len(name) for name in names)])

    def line(self, name: str, text: str) -> None:
        """Write one line of process `name`."""
        prefix = f"{name:<{self.width}} |"
        if self.colour:
            code = self._colours.setdefault(name, _COLOURS[len(self._colours) % len(_COLOURS)])
            prefix = f"\033[{code}m{prefix}{_RESET}"
        self.sink.write(f"{prefix} {text}\n")
        self.sink.flush()


class ManagedProcess:
    """A child process whose output is prefixed and remembered (its last lines)."""

    def __init__(self, spec: ProcessSpec, output: Output) -> None:
        self.spec = spec
        self.output = output
        self.lines: deque[str] = deque(maxlen=LAST_LINES)
        self.proc: asyncio.subprocess.Process | None = None
        self._pump: asyncio.Task[None] | None = None

    @property
    def name(self) -> str:
        """The process's display name."""
        return self.spec.name

    @property
    def returncode(self) -> int | None:
        """The exit code once it has exited."""
        return None if self.proc is None else self.proc.returncode

    async def start(self) -> None:
        """Spawn the process in its own session, with output piped through `Output`."""
        if port_is_open(self.spec.host, self.spec.port):
            raise StartupError(
                self.name, f"port {self.spec.port} is already in use by another process"
            )
        env = {**os.environ, **self.spec.env, "PYTHONUNBUFFERED": "1"}
        self.proc = await asyncio.create_subprocess_exec(
            *orphan_guarded(self.spec.argv),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=env,
            cwd=self.spec.cwd,
            start_new_session=True,
            limit=1 << 20,
        )
        self._pump = asyncio.create_task(self._copy_output(), name=f"output-{self.name}")

    async def _copy_output(self) -> None:
        assert self.proc is not None
        assert self.proc.stdout is not None
        stream = self.proc.stdout
        while True:
            try:
                raw = await stream.readline()
            except ValueError:
                self.output.line(self.name, "[a line longer than 1 MiB was dropped]")
                continue
            if not raw:
                return
            text = raw.decode("utf-8", errors="replace").rstrip("\r\n")
            self.lines.append(text)
            self.output.line(self.name, text)

    async def wait_ready(self, limit_s: float, client: httpx.AsyncClient) -> None:
        """Poll `GET <ready_path>` until it answers 200; `StartupError` if it dies first."""
        assert self.proc is not None
        deadline = time.monotonic() + limit_s
        last = "no answer"
        url = self.spec.url(self.spec.ready_path)
        while True:
            if self.proc.returncode is not None:
                await self._drain()
                raise StartupError(
                    self.name, f"exited with code {self.proc.returncode}", self.lines
                )
            try:
                response = await client.get(url)
            except httpx.HTTPError as exc:
                last = f"{type(exc).__name__}"
            else:
                if response.status_code == 200:
                    return
                last = f"HTTP {response.status_code} {response.text[:300]}"
            if time.monotonic() >= deadline:
                raise StartupError(
                    self.name, f"{url} not ready after {limit_s:.0f}s (last: {last})", self.lines
                )
            await asyncio.sleep(0.25)

    async def _drain(self) -> None:
        if self._pump is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._pump), 2.0)

    async def wait(self) -> int:
        """Wait until the process exits and its output is copied; return its exit code."""
        assert self.proc is not None
        code = await self.proc.wait()
        await self._drain()
        return code

    async def stop(self, grace_s: float) -> None:
        """SIGTERM its process group, wait up to `grace_s` seconds, then SIGKILL."""
        if self.proc is None:
            return
        if self.proc.returncode is None:
            signal_group(self.proc.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), grace_s)
            except TimeoutError:
                self.output.line(self.name, f"[did not stop within {grace_s:.0f}s: killing]")
                signal_group(self.proc.pid, signal.SIGKILL)
                await self.proc.wait()
        await self._drain()

    def kill(self) -> None:
        """SIGKILL the process group at once."""
        if self.proc is not None and self.proc.returncode is None:
            signal_group(self.proc.pid, signal.SIGKILL)


async def _first_failure(awaitables: Iterable[Awaitable[None]]) -> None:
    """Await all; on the first exception cancel the others and raise it."""
    tasks = [asyncio.ensure_future(awaitable) for awaitable in awaitables]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            error = task.exception()
            if error is not None:
                raise error
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class Supervisor:
    """Starts processes in order, each ready before the next, and stops them one by one."""

    def __init__(
        self,
        output: Output | None = None,
        *,
        ready_timeout: float = 90.0,
        stop_timeout: float = 20.0,
    ) -> None:
        self.output = output or Output()
        self.ready_timeout = ready_timeout
        self.stop_timeout = stop_timeout
        self.processes: list[ManagedProcess] = []

    async def start_all(self, specs: Sequence[ProcessSpec], *, parallel: bool = False) -> None:
        """Start every process and wait until each is ready.

        In order by default, each ready before the next is spawned; with `parallel` all are
        spawned at once and each one's readiness is awaited. On any failure everything this
        supervisor started (in earlier calls too) is stopped and `StartupError` is raised.
        """
        self.output.fit([spec.name for spec in specs])
        async with httpx.AsyncClient(timeout=2.0) as client:
            try:
                if parallel:
                    started = [await self._spawn(spec) for spec in specs]
                    await _first_failure(self._ready(p, client) for p in started)
                else:
                    for spec in specs:
                        await self._ready(await self._spawn(spec), client)
            except BaseException:
                await self.stop_all()
                raise

    async def _ready(self, process: ManagedProcess, client: httpx.AsyncClient) -> None:
        await process.wait_ready(self.ready_timeout, client)
        self.output.line("devstack", f"{process.name} is ready on {process.spec.url()}")

    async def _spawn(self, spec: ProcessSpec) -> ManagedProcess:
        process = ManagedProcess(spec, self.output)
        await process.start()
        self.processes.append(process)
        return process

    async def respawn(self, process: ManagedProcess) -> ManagedProcess:
        """Start a new process from the spec of one that exited, in its place."""
        fresh = ManagedProcess(process.spec, self.output)
        await fresh.start()
        index = self.processes.index(process)
        self.processes[index] = fresh
        return fresh

    async def wait_any_exit(self) -> ManagedProcess:
        """Wait until one of the running processes exits and return it."""
        waiters = {asyncio.create_task(p.wait()): p for p in self.processes}
        try:
            done, _ = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in waiters:
                task.cancel()
        return waiters[next(iter(done))]

    async def stop_all(self) -> None:
        """Stop the processes in reverse start order, each one fully before the next."""
        while self.processes:
            process = self.processes.pop()
            if process.returncode is None:
                self.output.line("devstack", f"stopping {process.name}")
            await process.stop(self.stop_timeout)

    def kill_all(self) -> None:
        """SIGKILL every process at once (a second Ctrl-C)."""
        for process in self.processes:
            process.kill()


async def follow_log(path: Path, offset: int, output: Output, name: str) -> None:
    """Copy the lines appended to `path` after `offset` to `output`, until cancelled.

    Brokers write to a log file (so that their output survives them for error reports);
    this shows it live like the output of the other processes.
    """
    pending = b""
    while True:
        try:
            with path.open("rb") as handle:
                handle.seek(offset)
                chunk = handle.read()
        except FileNotFoundError:
            chunk = b""
        offset += len(chunk)
        pending += chunk
        *complete, pending = pending.split(b"\n")
        for raw in complete:
            output.line(name, raw.decode("utf-8", errors="replace").rstrip("\r"))
        await asyncio.sleep(0.2)


@dataclass
class StackConfig:
    """What `devstack up` / `check` run."""

    kafka: BrokerKind = "tansu"
    kafka_port: int = 9092
    bootstrap: str = ""
    enable_idempotence: bool | None = None
    database_url: str = ""
    host: str = "127.0.0.1"
    root: Path = field(default_factory=repo_root)
    # Where the stack keeps its data (PostgreSQL, the broker's log, stack.json).
    data_dir: Path | None = None
    services: Sequence[ServiceDef] = DEFAULT_STACK
    topics: Sequence[tuple[str, int]] | None = None
    ready_timeout: float = 90.0
    sequential: bool = False
    python: str = sys.executable
    extra_env: Mapping[str, str] = field(default_factory=dict)
    tracing: bool = False
    observability: bool = False


def importable(package: str) -> bool:
    """Whether `package` can be imported by this interpreter (and so by the children)."""
    try:
        return importlib.util.find_spec(package) is not None
    except (ImportError, ValueError):
        return False


def service_database_name(service: ServiceDef) -> str:
    """The per-process PostgreSQL database: `portal_<package>`."""
    return f"portal_{service.package}"


RESTART_FIRST_S = 1.0
RESTART_MAX_S = 30.0
# A process that stayed up this long starts its back-off afresh after its next exit.
RESTART_RESET_S = 60.0


class Stack:
    """The broker, the topics and the stack's processes, started and stopped together."""

    def __init__(self, config: StackConfig, output: Output | None = None) -> None:
        self.config = config
        self.output = output or Output()
        self.supervisor = Supervisor(self.output, ready_timeout=config.ready_timeout)
        self.broker: Broker | None = None
        self.bootstrap = config.bootstrap
        self.services: list[ServiceDef] = []
        self.skipped: list[ServiceDef] = []
        self._broker_tail: asyncio.Task[None] | None = None
        self.postgres: EmbeddedPostgres | None = None
        self.database_base = config.database_url
        self.restarts: dict[str, int] = {}
        self.states: dict[str, str] = {}

    @property
    def data_dir(self) -> Path:
        """`.data` of the repository, unless the configuration names another directory."""
        return self.config.data_dir or self.config.root / ".data"

    @property
    def enable_idempotence(self) -> bool:
        """Idempotent producers: on for Apache Kafka, off for Tansu (which rejects them)."""
        if self.config.enable_idempotence is not None:
            return self.config.enable_idempotence
        return self.broker.enable_idempotence if self.broker is not None else False

    def _select_services(self) -> None:
        self.services, self.skipped, missing = [], [], []
        for service in self.config.services:
            if importable(service.package):
                self.services.append(service)
            elif service.optional:
                self.skipped.append(service)
            else:
                missing.append(service.package)
        if missing:
            raise StartupError(
                "devstack",
                f"packages not installed: {', '.join(missing)} (run `make install`)",
            )

    async def start(self) -> None:
        """Start the broker (unless one was given), create the topics, start the processes."""
        self._select_services()
        self.output.fit(["kafka", "postgres", "devstack", *(s.name for s in self.config.services)])
        for service in self.skipped:
            self.output.line(
                "devstack", f"{service.name} skipped: package {service.package} not installed"
            )
        if not self.bootstrap:
            await self._start_broker()
        self.output.line("devstack", f"creating topics on {self.bootstrap}")
        try:
            await ensure_topics(self.bootstrap, names_and_partitions=self.config.topics)
        except (ImportError, KafkaError, OSError, RuntimeError) as exc:
            raise StartupError("kafka", f"creating topics failed: {exc!r}") from exc
        try:
            urls = await self._databases()
        except (OSError, asyncpg.PostgresError, RuntimeError) as exc:
            raise StartupError("postgres", f"creating databases failed: {exc}") from exc
        from devstack import observability

        await self.supervisor.start_all(
            list(
                observability.processes(
                    self.config.python,
                    self.config.host,
                    self.config.root,
                    self.database_base,
                    tracing=self.config.tracing,
                    metrics=self.config.observability,
                )
            )
        )
        specs = {s.name: self._spec(s, urls.get(s.name, "")) for s in self.services}
        # What the services call at start-up (the EHR sandbox) comes first and alone. The
        # services themselves start together unless asked not to: most of their start-up
        # is waiting for Kafka group joins, which overlap well.
        first = [specs[s.name] for s in self.services if not s.is_service]
        rest = [specs[s.name] for s in self.services if s.is_service]
        await self.supervisor.start_all(first)
        await self.supervisor.start_all(rest, parallel=not self.config.sequential)
        for process in self.supervisor.processes:
            self.states[process.name] = "ready"
            self.restarts.setdefault(process.name, 0)
        self.write_status()

    async def _start_broker(self) -> None:
        config = self.config
        data_dir = self.data_dir / ("kafka" if config.kafka == "apache" else "tansu")
        self.broker = make_broker(
            config.kafka, port=config.kafka_port, data_dir=data_dir, host=config.host
        )
        self.output.line("devstack", f"starting {config.kafka} broker on {config.kafka_port}")
        data_dir.mkdir(parents=True, exist_ok=True)
        offset = self.broker.log_path.stat().st_size if self.broker.log_path.exists() else 0
        await self.broker.start()
        self._broker_tail = asyncio.create_task(
            follow_log(self.broker.log_path, offset, self.output, "kafka")
        )
        try:
            await self.broker.wait_ready(timeout=120.0)
        except Exception as exc:
            raise StartupError("kafka", str(exc)) from exc
        self.bootstrap = self.broker.bootstrap_servers

    async def _databases(self) -> dict[str, str]:
        """One PostgreSQL database per process: on DATABASE_URL's server, else embedded."""
        base = self.config.database_url
        if base:
            scheme = urlsplit(base).scheme.split("+", 1)[0]
            if scheme not in ("postgresql", "postgres"):
                raise StartupError(
                    "devstack",
                    f"DATABASE_URL must be a PostgreSQL server URL, not {scheme!r} "
                    "(unset it to use the embedded PostgreSQL under .data/postgres)",
                )
        else:
            self.postgres = EmbeddedPostgres(self.data_dir / "postgres")
            self.output.line(
                "devstack", f"starting embedded PostgreSQL in {self.postgres.data_dir}"
            )
            base = await asyncio.to_thread(self.postgres.start)
        self.database_base = base
        urls = {}
        for service in self.services:
            name = service_database_name(service)
            await create_database(name, base)
            urls[service.name] = database_url(base, name)
        self.output.line("devstack", f"databases ready: {', '.join(sorted(urls))} on {base}")
        return urls

    def _spec(self, service: ServiceDef, database: str) -> ProcessSpec:
        from devstack import observability

        config = self.config
        argv = [
            config.python,
            "-m",
            "uvicorn",
            "--factory",
            service.app,
            "--host",
            config.host,
            "--port",
            str(service.port),
            # The gateway's SSE streams never end by themselves; without a bound, a stop would
            # wait for every open browser tab.
            "--timeout-graceful-shutdown",
            "10",
            "--timeout-keep-alive",
            str(SERVER_KEEP_ALIVE_S),
        ]
        env = {
            "SERVICE_NAME": service.name,
            "HTTP_PORT": str(service.port),
            "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
            "KAFKA_ENABLE_IDEMPOTENCE": "true" if self.enable_idempotence else "false",
            **self._fetch_wait_env(),
            service.database_env: database,
            "LOG_FORMAT": "json",
            **self._identity_env(),
            # The gateway's signed audit checkpoints, apart from the database.
            "AUDIT_CHECKPOINT_DIR": str(self.data_dir / "audit-anchors"),
            **observability.service_env(config.host, tracing=config.tracing),
            **config.extra_env,
        }
        return ProcessSpec(
            name=service.name,
            argv=argv,
            port=service.port,
            env=env,
            host=config.host,
            cwd=config.root,
        )

    def _fetch_wait_env(self) -> dict[str, str]:
        """The broker's interactive fetch wait, unless the environment sets one."""
        wait = self.broker.interactive_fetch_wait_ms if self.broker is not None else None
        if wait is None or os.environ.get("KAFKA_INTERACTIVE_FETCH_MAX_WAIT_MS"):
            return {}
        return {"KAFKA_INTERACTIVE_FETCH_MAX_WAIT_MS": str(wait)}

    def _identity_env(self) -> dict[str, str]:
        """The stack's one service-token key, shared by every service: a random key kept in
        the data directory (owner-only), unless SERVICE_TOKEN_KEY is set. A developer can
        call a service directly with a token signed by it (`servicekit.testing`)."""
        if os.environ.get("SERVICE_TOKEN_KEY") or os.environ.get("SERVICE_TOKEN_KEY_FILE"):
            return {}
        path = self.data_dir / "service-token-key"
        if not path.exists():
            import secrets

            self.data_dir.mkdir(parents=True, exist_ok=True)
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "w") as out:
                out.write(secrets.token_urlsafe(48))
        return {"SERVICE_TOKEN_KEY_FILE": str(path)}

    async def wait_broker_exit(self) -> None:
        """Return when the broker this stack started is no longer running (never otherwise)."""
        if self.broker is None:
            await asyncio.Event().wait()
            return
        # The broker is a Popen child (not tied to this loop), so it can only be polled.
        while True:
            if not self.broker.is_running():
                return
            await asyncio.sleep(0.5)

    async def stop(self) -> None:
        """Stop the processes one by one, then the broker, then the embedded PostgreSQL."""
        await self.supervisor.stop_all()
        if self.broker is not None:
            self.output.line("devstack", f"stopping {self.broker.kind} broker")
            await self.broker.stop()
        if self._broker_tail is not None:
            # One last copy so the broker's shutdown lines are not lost.
            await asyncio.sleep(0.3)
            self._broker_tail.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._broker_tail
        if self.postgres is not None:
            self.output.line("devstack", "stopping PostgreSQL")
            await asyncio.to_thread(self.postgres.stop)
        self.states = dict.fromkeys(self.states, "stopped")
        self.write_status()

    @property
    def status_path(self) -> Path:
        """`stack.json`: what runs where, for people and for the acceptance tests."""
        return self.data_dir / "stack.json"

    def write_status(self) -> None:
        """Write `stack.json`: each process's pid, port, state and restart count."""
        processes = {
            p.name: {
                "pid": p.proc.pid if p.proc is not None else None,
                "port": p.spec.port,
                "state": self.states.get(p.name, "starting"),
                "restarts": self.restarts.get(p.name, 0),
            }
            for p in self.supervisor.processes
        }
        status = {
            "supervisor_pid": os.getpid(),
            "processes": processes,
            "broker": {
                "kind": self.broker.kind if self.broker is not None else "external",
                "bootstrap": self.bootstrap,
                "pid": self.broker.pid if self.broker is not None else None,
                "restarts": self.restarts.get("kafka", 0),
            },
            "database": self.database_base,
        }
        self.data_dir.mkdir(parents=True, exist_ok=True)
        temporary = self.status_path.with_suffix(".tmp")
        temporary.write_text(json.dumps(status, indent=2) + "\n")
        temporary.replace(self.status_path)

    async def keep_running(self, process: ManagedProcess, stop: asyncio.Event) -> None:
        """Restart `process` with back-off whenever it exits, until `stop` is set."""
        delay = RESTART_FIRST_S
        started = time.monotonic()
        while True:
            code = await process.wait()
            if stop.is_set():
                return
            if time.monotonic() - started >= RESTART_RESET_S:
                delay = RESTART_FIRST_S
            self.restarts[process.name] = self.restarts.get(process.name, 0) + 1
            self.states[process.name] = "restarting"
            self.write_status()
            self.output.line(
                "devstack",
                f"{process.name} exited with code {code}; restarting in {delay:.0f} s "
                f"(restart {self.restarts[process.name]}). Last lines:",
            )
            for line in list(process.lines)[-10:]:
                self.output.line("devstack", f"  {line}")
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
                    return
                delay = min(RESTART_MAX_S, delay * 2)
                try:
                    process = await self.supervisor.respawn(process)
                    started = time.monotonic()
                    self.write_status()
                    async with httpx.AsyncClient(timeout=2.0) as client:
                        await process.wait_ready(self.config.ready_timeout, client)
                    break
                except StartupError as exc:
                    self.output.line("devstack", f"{process.name} did not come back: {exc.reason}")
                    # Not ready in time but alive: stop it, or the next try finds the port taken.
                    await process.stop(self.supervisor.stop_timeout)
            self.states[process.name] = "ready"
            self.write_status()
            self.output.line("devstack", f"{process.name} is ready again on {process.spec.url()}")

    async def keep_broker_running(self, stop: asyncio.Event) -> None:
        """Restart the broker this stack started whenever it exits, until `stop` is set."""
        if self.broker is None:
            return
        delay = RESTART_FIRST_S
        while not stop.is_set():
            await self.wait_broker_exit()
            if stop.is_set():
                return
            self.restarts["kafka"] = self.restarts.get("kafka", 0) + 1
            self.output.line(
                "devstack", f"the {self.broker.kind} broker exited; restarting in {delay:.0f} s"
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
                return
            try:
                await self.broker.start()
                await self.broker.wait_ready(timeout=120.0)
                await ensure_topics(self.bootstrap, names_and_partitions=self.config.topics)
            except Exception as exc:
                self.output.line("devstack", f"the broker did not come back: {exc!r}")
                delay = min(RESTART_MAX_S, delay * 2)
                continue
            delay = RESTART_FIRST_S
            self.write_status()
            self.output.line("devstack", f"the broker is ready again on {self.bootstrap}")

    async def kill(self) -> None:
        """Kill everything at once (a second Ctrl-C while stopping)."""
        self.supervisor.kill_all()
        if self.broker is not None:
            await self.broker.kill()

    def asyncapi_document(self) -> str | None:
        """The repository's AsyncAPI document (generated from the code; no service serves
        one over HTTP)."""
        document = self.config.root / "docs" / "asyncapi.yaml"
        return str(document.relative_to(self.config.root)) if document.is_file() else None

    async def summary(self) -> str:
        """Where everything is, for the end of start-up."""
        config = self.config
        by_name = {s.name: s for s in self.services}
        lines = ["", "The portal stack is up."]
        if "gateway" in by_name:
            lines.append(f"  Portal:       http://{config.host}:{by_name['gateway'].port}/")
        lines.append("  API docs:")
        async with httpx.AsyncClient(timeout=2.0) as client:
            for process in self.supervisor.processes:
                url = process.spec.url("/docs")
                # Only what is really there: the EHR sandbox, for one, need not serve /docs.
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(url)).status_code == 200:
                        lines.append(f"    {process.name:<14} {url}")
        lines.append("  AsyncAPI:     " + (self.asyncapi_document() or "none published"))
        if EHR_SANDBOX in self.services:
            lines.append(
                f"  EHR sandbox:  http://{config.host}:{EHR_SANDBOX.port}/ "
                f"(demo patients: /dev/patients)"
            )
        kind = self.broker.kind if self.broker is not None else "external"
        lines.append(f"  Kafka:        {self.bootstrap} ({kind})")
        where = "embedded" if self.postgres is not None else "DATABASE_URL"
        lines.append(f"  PostgreSQL:   {self.database_base} ({where}, one database per process)")
        lines.append(f"  Status:       {self.status_path} (pids, restarts)")
        lines.append("Press Ctrl-C to stop.")
        return "\n".join(lines)


# What runs once the signal handlers are in place: returns the exit code.
Body = Callable[[Stack, asyncio.Event], Awaitable[int]]


async def _run_until_signal(stack: Stack, body: Body) -> int:
    """Run `body` with Ctrl-C/SIGTERM stopping the stack cleanly (a second one kills it)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals = (signal.SIGINT, signal.SIGTERM)
    killers: set[asyncio.Task[None]] = set()

    def on_signal() -> None:
        if stop.is_set():
            stack.output.line("devstack", "second signal: killing everything")
            killer = loop.create_task(stack.kill())
            killers.add(killer)
            killer.add_done_callback(killers.discard)
        else:
            stack.output.line("devstack", "stopping (press Ctrl-C again to kill at once)")
            stop.set()

    for sig in signals:
        loop.add_signal_handler(sig, on_signal)
    try:
        return await body(stack, stop)
    finally:
        await stack.stop()
        for sig in signals:
            loop.remove_signal_handler(sig)


async def _start_or_stop(stack: Stack, stop: asyncio.Event) -> bool:
    """Start the stack unless a stop signal comes first; True when it is up."""
    starting = asyncio.create_task(stack.start())
    stopping = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
    if not starting.done():
        starting.cancel()
        with contextlib.suppress(asyncio.CancelledError, StartupError):
            await starting
        return False
    starting.result()
    return True


async def _serve(stack: Stack, stop: asyncio.Event) -> int:
    if not await _start_or_stop(stack, stop):
        return 130
    for line in (await stack.summary()).splitlines():
        stack.output.line("devstack", line)
    keepers = [
        asyncio.create_task(stack.keep_running(p, stop), name=f"keep-{p.name}")
        for p in list(stack.supervisor.processes)
    ]
    keepers.append(asyncio.create_task(stack.keep_broker_running(stop), name="keep-broker"))
    try:
        await stop.wait()
    finally:
        for keeper in keepers:
            keeper.cancel()
        await asyncio.gather(*keepers, return_exceptions=True)
    return 0


async def _check(stack: Stack, stop: asyncio.Event) -> int:
    if not await _start_or_stop(stack, stop):
        return 130
    return await verify_endpoints(stack)


async def verify_endpoints(stack: Stack) -> int:
    """GET /readyz, /healthz and /metrics of every service; 0 when all answer 200."""
    failures = 0
    async with httpx.AsyncClient(timeout=10.0) as client:
        for process in stack.supervisor.processes:
            service = next((s for s in stack.services if s.name == process.name), None)
            paths = (
                ("/readyz", "/healthz", "/metrics")
                if service is not None and service.is_service
                else (process.spec.ready_path,)
            )
            for path in paths:
                url = process.spec.url(path)
                try:
                    status = str((await client.get(url)).status_code)
                except httpx.HTTPError as exc:
                    status = type(exc).__name__
                ok = status == "200"
                failures += not ok
                stack.output.line("check", f"{'ok  ' if ok else 'FAIL'} {url} -> {status}")
    verdict = "all endpoints answered 200" if not failures else f"{failures} endpoint(s) failed"
    stack.output.line("check", verdict)
    return 0 if not failures else 1


async def _run(config: StackConfig, body: Body, output: Output | None) -> int:
    stack = Stack(config, output)
    try:
        return await _run_until_signal(stack, body)
    except StartupError as exc:
        stack.output.line("devstack", f"start-up failed: {exc.name}: {exc.reason}")
        for line in exc.lines:
            stack.output.line("devstack", f"  {line}")
        return 1


async def up(config: StackConfig, output: Output | None = None) -> int:
    """Run the stack in the foreground until Ctrl-C/SIGTERM or until a process dies."""
    return await _run(config, _serve, output)


async def check(config: StackConfig, output: Output | None = None) -> int:
    """Start the stack, verify every service's endpoints, stop it; 0 when all is well."""
    return await _run(config, _check, output)
