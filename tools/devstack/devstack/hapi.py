"""HAPI FHIR JPA server as a second, independent EHR for the interop tests.

`deploy/local/hapi/` holds a pom that fetches HAPI FHIR 8.8.x from Maven Central and a small
Spring Boot application (R4, H2 in memory, rest-hook and topic-based Subscriptions). The
first run compiles it and copies the jars into `deploy/local/hapi/lib` (git-ignored); Maven's
own cache (~/.m2) makes later fetches offline. The server is driven like the Kafka brokers:
`start()`, `await wait_ready()`, `stop()`. Every start is an empty database.

Start-up takes about 40 s on 2 cores (Hibernate builds HAPI's schema in H2 and the
validator loads the R4 definitions), which is why the test fixture starts it once per session.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Self

import httpx

from devstack._paths import free_port, port_is_open, repo_root
from devstack._proc import orphan_guarded, signal_group, tail_lines

MAIN_CLASS = "portal.hapi.HapiServer"
READY_MARKER = "PORTAL_TOPICS_READY"
_POLL_S = 0.2


class HapiError(RuntimeError):
    """HAPI could not be built, did not start or did not become ready."""


def hapi_dir() -> Path:
    """`deploy/local/hapi` in the repository: the pom, the sources, `lib/` and `target/`."""
    return repo_root() / "deploy" / "local" / "hapi"


def _built(home: Path) -> bool:
    stamp = home / "lib" / ".fetched"
    if not stamp.is_file():
        return False
    inputs = [home / "pom.xml", *(p for p in (home / "src").rglob("*") if p.is_file())]
    newest_input = max(p.stat().st_mtime for p in inputs)
    return stamp.stat().st_mtime >= newest_input


def build_hapi(home: Path | None = None, *, force: bool = False) -> Path:
    """Compile the application and copy HAPI's jars into `<home>/lib` unless up to date.

    Raises `HapiError` when Maven is missing or fails. Returns the lib directory.
    """
    home = home or hapi_dir()
    lib_dir = home / "lib"
    if not force and _built(home):
        return lib_dir
    mvn = shutil.which("mvn")
    if mvn is None:
        raise HapiError("Maven (mvn) is not installed: apt-get install maven")
    # Jars of an older pom would sit on the classpath next to the new ones.
    if lib_dir.is_dir():
        for jar in lib_dir.glob("*.jar"):
            jar.unlink()
    result = subprocess.run(
        [mvn, "-q", "-B", "-f", str(home / "pom.xml"), "compile", "dependency:copy-dependencies"],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0 or not any(lib_dir.glob("hapi-fhir-jpaserver-base-*.jar")):
        raise HapiError(
            f"mvn compile dependency:copy-dependencies failed (exit {result.returncode}):\n"
            f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
        )
    (lib_dir / ".fetched").touch()
    return lib_dir


class HapiServer:
    """One HAPI FHIR JVM listening on `host:port`, its output appended to `log_path`."""

    def __init__(
        self,
        *,
        port: int | None = None,
        data_dir: Path | None = None,
        host: str = "127.0.0.1",
        heap: str = "768m",
        home: Path | None = None,
        topics_file: Path | None = None,
    ) -> None:
        self.host = host
        self.port = port if port is not None else free_port(host)
        self._owns_dir = data_dir is None
        self.data_dir = data_dir or Path(tempfile.mkdtemp(prefix="devstack-hapi-"))
        self.heap = heap
        self.home = home
        self.topics_file = topics_file
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        """The FHIR base URL."""
        return f"http://{self.host}:{self.port}/fhir"

    @property
    def log_path(self) -> Path:
        """The file the server's output goes to."""
        return self.data_dir / "hapi.log"

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the server's output, for error messages."""
        return "\n".join(tail_lines(self.log_path, lines))

    def is_running(self) -> bool:
        """Whether the JVM is alive."""
        return self._proc is not None and self._proc.poll() is None

    def command(self) -> list[str]:
        """`java ... portal.hapi.HapiServer` on this host and port."""
        java = shutil.which("java")
        if java is None:
            raise HapiError("Java is not installed: apt-get install openjdk-17-jre-headless")
        home = self.home or hapi_dir()
        return [
            java,
            f"-Xmx{self.heap}",
            # Serial GC and C1 only: start-up time matters more than throughput on 2 cores.
            "-XX:+UseSerialGC",
            "-XX:TieredStopAtLevel=1",
            "-XX:+ExitOnOutOfMemoryError",
            "-Djava.awt.headless=true",
            "-cp",
            f"{home / 'target' / 'classes'}:{home / 'lib'}/*",
            MAIN_CLASS,
            f"--server.address={self.host}",
            f"--server.port={self.port}",
            f"--portal.topics-file={self.topics_file or ''}",
        ]

    async def start(self) -> None:
        """Build if needed and start the JVM; returns at once (use `wait_ready`)."""
        if self.is_running():
            return
        if port_is_open(self.host, self.port):
            raise HapiError(f"port {self.port} on {self.host} is already in use")
        await asyncio.to_thread(build_hapi, self.home)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        argv = self.command()
        with self.log_path.open("ab") as log:
            log.write(f"--- devstack {time.strftime('%H:%M:%S')}: {' '.join(argv)}\n".encode())
            log.flush()
            self._proc = subprocess.Popen(  # noqa: ASYNC220
                orphan_guarded(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.data_dir,
                start_new_session=True,
            )

    async def wait_ready(self, timeout: float = 240.0) -> None:  # noqa: ASYNC109
        """Wait until the topics are registered and `GET /fhir/metadata` answers 200.

        `HapiError` (with the end of the log) if the JVM exits first or time runs out.
        """
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient(timeout=5.0) as client:
            while True:
                if self._proc is None:
                    raise HapiError("HAPI was never started")
                code = self._proc.poll()
                if code is not None:
                    raise HapiError(
                        f"HAPI exited with code {code} before it was ready; last lines of "
                        f"{self.log_path}:\n{self.log_tail()}"
                    )
                if self._seeded() and port_is_open(self.host, self.port, timeout=0.2):
                    try:
                        response = await client.get(f"{self.base_url}/metadata")
                        if response.status_code == 200:
                            return
                    except httpx.HTTPError:
                        pass
                if time.monotonic() >= deadline:
                    raise HapiError(
                        f"HAPI on {self.base_url} not ready after {timeout}s; last lines of "
                        f"{self.log_path}:\n{self.log_tail()}"
                    )
                await asyncio.sleep(_POLL_S)

    def _seeded(self) -> bool:
        # The application logs this once its SubscriptionTopics are loaded and registered.
        try:
            return READY_MARKER in self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return False

    async def stop(self, timeout: float = 30.0) -> None:  # noqa: ASYNC109
        """SIGTERM, wait up to `timeout` seconds, then SIGKILL; remove a temporary dir."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            signal_group(proc.pid, signal.SIGTERM)
            try:
                await asyncio.to_thread(proc.wait, timeout)
            except subprocess.TimeoutExpired:
                signal_group(proc.pid, signal.SIGKILL)
                await asyncio.to_thread(proc.wait, 10)
        self._proc = None
        if self._owns_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

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
