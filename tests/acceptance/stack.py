"""The stack under acceptance: started exactly as `make up` starts it, driven from outside.

`LocalStack` runs `python -m devstack up` (the command behind `make up`: the supervisor, the
broker, the embedded PostgreSQL, the EHR sandbox and the six services on their fixed ports)
with its data in a directory of its own, and reads the supervisor's `stack.json` to know
what runs where. The suite talks to it only through public interfaces: the gateway's HTTP
API and event stream with patient tokens from the sandbox's dev issuer, and the sandbox's
simulator and FHIR API as the clinic.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from servicekit.crypto import new_key

GATEWAY = "http://127.0.0.1:8000"
SANDBOX = "http://127.0.0.1:8090"
ADMIN_TOKEN = "dev-admin-token"  # the sandbox's documented development admin token
CONNECTOR = "http://127.0.0.1:8005"
OPS_TOKEN = "dev-ops-token"  # the services' documented development ops token
PORTS = {
    "gateway": 8000,
    "records": 8001,
    "scheduling": 8002,
    "messaging": 8003,
    "triage": 8004,
    "ehr-connector": 8005,
    "ehr-sandbox": 8090,
    "kafka": 9092,
}


class StackFailed(RuntimeError):
    """The stack did not start, or died under the suite."""


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class LocalStack:
    """`python -m devstack up` in the background, with its own data directory."""

    data_dir: Path
    kafka: str = "tansu"
    # Also the trace sink, every service sending it spans (`--tracing`; benchmarks' --traces).
    tracing: bool = False
    log_path: Path = field(init=False)
    process: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        self.log_path = self.data_dir / "stack.log"

    @property
    def status_path(self) -> Path:
        """The supervisor's `stack.json`."""
        return self.data_dir / "stack.json"

    @property
    def keys_path(self) -> Path:
        """The encryption keys of messaging and triage, as a mounted Secret would hold them
        (`ENCRYPTION_KEYS_FILE`): a rotation rewrites it and restarts the services."""
        return self.data_dir / "encryption-keys.json"

    def rotate_encryption_key(self) -> str:
        """Add a new key to the keys file and make it the active one; returns its id."""
        content = json.loads(self.keys_path.read_text(encoding="utf-8"))
        key_id = f"acceptance-{len(content['keys']) + 1}"
        content["keys"][key_id] = new_key()
        content["active"] = key_id
        self.keys_path.write_text(json.dumps(content), encoding="utf-8")
        return key_id

    def status(self) -> dict[str, Any]:
        """What the supervisor says runs where (pids, states, restarts)."""
        try:
            data: dict[str, Any] = json.loads(self.status_path.read_text())
        except (OSError, ValueError):
            return {}
        return data

    def log_tail(self, lines: int = 60) -> str:
        """The last lines of the stack's output."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def start(self, timeout: float = 240.0) -> None:
        """Start the stack and wait until every process is ready."""
        busy = [name for name, port in PORTS.items() if _port_open(port)]
        if busy:
            raise StackFailed(
                f"ports of the stack are in use ({', '.join(busy)}): stop `make up` first"
            )
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if not self.keys_path.exists():
            first = {"keys": {"acceptance-1": new_key()}, "active": "acceptance-1"}
            self.keys_path.write_text(json.dumps(first), encoding="utf-8")
        env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "KAFKA")}
        env["ENCRYPTION_KEYS_FILE"] = str(self.keys_path)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "devstack",
                    "up",
                    "--kafka",
                    self.kafka,
                    "--data-dir",
                    str(self.data_dir),
                    *(["--tracing"] if self.tracing else []),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**env, "NO_COLOR": "1"},
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise StackFailed(
                    f"the stack exited with {self.process.returncode}:\n" + self.log_tail()
                )
            processes = self.status().get("processes", {})
            if processes and all(p.get("state") == "ready" for p in processes.values()):
                return
            if time.monotonic() > deadline:
                raise StackFailed(
                    f"the stack was not ready after {timeout:.0f} s:\n" + self.log_tail()
                )
            time.sleep(0.5)

    def stop(self, timeout: float = 90.0) -> None:
        """Ctrl-C, as a person stops `make up`; kill it if it does not stop in time."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def kill(self, name: str) -> int:
        """SIGKILL one process of the stack ("kafka" for the broker); returns its pid."""
        status = self.status()
        pid = (
            status.get("broker", {}).get("pid")
            if name == "kafka"
            else status.get("processes", {}).get(name, {}).get("pid")
        )
        if not pid:
            raise StackFailed(f"no pid for {name} in {self.status_path}")
        with contextlib.suppress(ProcessLookupError):
            os.killpg(int(pid), signal.SIGKILL)
        return int(pid)

    def restarts(self, name: str) -> int:
        """How often the supervisor restarted a process ("kafka": the broker)."""
        status = self.status()
        if name == "kafka":
            return int(status.get("broker", {}).get("restarts", 0))
        return int(status.get("processes", {}).get(name, {}).get("restarts", 0))

    async def wait_ready(self, name: str, timeout: float = 180.0) -> None:
        """Wait until the supervisor reports the process ready again."""
        deadline = time.monotonic() + timeout
        while True:
            state = self.status().get("processes", {}).get(name, {}).get("state")
            if state == "ready":
                return
            if self.process is not None and self.process.poll() is not None:
                raise StackFailed("the supervisor exited:\n" + self.log_tail())
            if time.monotonic() > deadline:
                raise StackFailed(f"{name} not ready again after {timeout:.0f} s")
            await asyncio.sleep(0.5)

    def database_url(self) -> str:
        """The PostgreSQL server the stack runs on (for fault injection)."""
        return str(self.status().get("database", ""))


def admin_client() -> httpx.AsyncClient:
    """The clinic's side: the sandbox with the admin token."""
    return httpx.AsyncClient(
        base_url=SANDBOX, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=60
    )
