"""Real-HTTP helpers for tests: serve an ASGI app with uvicorn, receive notifications.

Tests of subscriptions must cross TCP the way a vendor EHR's webhooks do, so they run the
sandbox under uvicorn on a local port and point Subscriptions at a `NotificationReceiver`,
a small `asyncio.start_server` HTTP/1.1 server that records every request and answers with
a status the test chooses. Ports are chosen by the kernel (`free_port`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvicorn

# Ports this process handed out lately: a test that picks several ports before it starts
# its servers must get distinct ones.
_handed_out: collections.deque[int] = collections.deque(maxlen=512)


def free_port(*, host: str = "127.0.0.1") -> int:
    """A port nothing is listening on, chosen by the kernel from its ephemeral range.

    Not from a small fixed range: there, one test's port was soon another's, and a server
    or background task of an earlier test still finishing (more of them on a slow machine)
    met the next test's server on the same port; other processes on the machine (a second
    checkout's tests, CI jobs) probed the same range too. The kernel hands out a bound
    port to no one else and cycles through thousands before it repeats one. The port is
    free when this returns and is bound by the caller's server right after.
    """
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind((host, 0))
            port = int(probe.getsockname()[1])
        if port not in _handed_out:
            _handed_out.append(port)
            return port
    raise RuntimeError("the kernel offered no port this process had not handed out lately")


@contextlib.asynccontextmanager
async def serve(app: Any, port: int, host: str = "127.0.0.1") -> AsyncIterator[str]:
    """Run `app` under uvicorn (lifespan included) until the block exits; yields its URL."""
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    deadline = time.monotonic() + 15
    while not server.started:
        if task.done():
            task.result()
            raise RuntimeError("uvicorn stopped during start-up")
        if time.monotonic() > deadline:
            raise TimeoutError("uvicorn did not start")
        await asyncio.sleep(0.02)
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, timeout=15)


@dataclass
class ReceivedRequest:
    """One request the receiver got."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    received_at: float

    def json(self) -> Any:
        """The body parsed as JSON."""
        return json.loads(self.body)

    @property
    def notification_type(self) -> str | None:
        """`type` of the status entry of a notification bundle (R4 or R4B form)."""
        try:
            status = self.json()["entry"][0]["resource"]
        except (ValueError, KeyError, IndexError, TypeError):
            return None
        if status.get("resourceType") == "SubscriptionStatus":
            return str(status.get("type"))
        for parameter in status.get("parameter", []):
            if parameter.get("name") == "type":
                return str(parameter.get("valueCode"))
        return None

    @property
    def event_numbers(self) -> list[int]:
        """The event numbers a notification carries."""
        try:
            status = self.json()["entry"][0]["resource"]
        except (ValueError, KeyError, IndexError, TypeError):
            return []
        if status.get("resourceType") == "SubscriptionStatus":
            return [int(e["eventNumber"]) for e in status.get("notificationEvent", [])]
        numbers = []
        for parameter in status.get("parameter", []):
            if parameter.get("name") == "notification-event":
                for part in parameter.get("part", []):
                    if part.get("name") == "event-number":
                        numbers.append(int(part["valueString"]))
        return numbers


@dataclass
class NotificationReceiver:
    """A minimal HTTP/1.1 server that records requests and answers with `status`.

    `respond` may be replaced by a function of the request returning the status code, to
    fail some requests and accept others.
    """

    port: int
    host: str = "127.0.0.1"
    status: int = 200
    respond: Callable[[ReceivedRequest], int] | None = None
    requests: list[ReceivedRequest] = field(default_factory=list)
    _server: asyncio.Server | None = None
    _arrived: asyncio.Condition | None = None

    @property
    def url(self) -> str:
        """The base URL the receiver listens on."""
        return f"http://{self.host}:{self.port}"

    async def __aenter__(self) -> NotificationReceiver:
        self._arrived = asyncio.Condition()
        self._server = await asyncio.start_server(self._handle, self.host, self.port)
        return self

    async def __aexit__(self, *_exc: object) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                request = await self._read_request(reader)
                if request is None:
                    break
                code = self.respond(request) if self.respond is not None else self.status
                assert self._arrived is not None
                async with self._arrived:
                    self.requests.append(request)
                    self._arrived.notify_all()
                head = f"HTTP/1.1 {code} X\r\nContent-Length: 0\r\nConnection: keep-alive\r\n\r\n"
                writer.write(head.encode())
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    @staticmethod
    async def _read_request(reader: asyncio.StreamReader) -> ReceivedRequest | None:
        line = await reader.readline()
        if not line:
            return None
        method, path, _version = line.decode("latin-1").split(" ", 2)
        headers: dict[str, str] = {}
        while True:
            header = await reader.readline()
            if header in (b"\r\n", b"\n", b""):
                break
            name, _, value = header.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        body = await reader.readexactly(length) if length else b""
        return ReceivedRequest(method, path, headers, body, time.monotonic())

    async def wait_for(
        self, predicate: Callable[[list[ReceivedRequest]], bool], within: float = 10.0
    ) -> list[ReceivedRequest]:
        """Wait until `predicate(requests)` holds; returns the requests so far."""
        assert self._arrived is not None
        async with self._arrived:
            await asyncio.wait_for(self._arrived.wait_for(lambda: predicate(self.requests)), within)
            return list(self.requests)

    def of_type(self, kind: str) -> list[ReceivedRequest]:
        """The notifications received of one type (handshake, heartbeat, ...)."""
        return [r for r in self.requests if r.notification_type == kind]


@dataclass
class RunningSandbox:
    """A sandbox app served over real HTTP, with an admin client."""

    app: Any
    url: str
    admin: Any  # httpx.AsyncClient with the admin bearer token

    @property
    def fhir(self) -> str:
        """The FHIR base URL."""
        return self.url + "/fhir"


@contextlib.asynccontextmanager
async def running_sandbox(
    data_dir: Path,
    *,
    port: int | None = None,
    seed: bool = False,
    auth: Any = None,
    subscriptions: Any = None,
    **overrides: Any,
) -> AsyncIterator[RunningSandbox]:
    """Build the sandbox (`create_app`) on the test PostgreSQL and serve it on a port.

    `auth` and `subscriptions` are optional `AuthSettings` / `SubscriptionSettings`;
    `overrides` go to `SandboxSettings` (`database_url` included, e.g. PostgreSQL).
    """
    import httpx

    from ehr_sandbox.app import create_app
    from ehr_sandbox.auth.settings import AuthSettings
    from ehr_sandbox.settings import SandboxSettings
    from ehr_sandbox.testing import database_for

    port = port or free_port()
    values: dict[str, Any] = {
        "base_url": f"http://127.0.0.1:{port}",
        "database_url": overrides.pop("database_url", None) or await database_for(data_dir),
        "seed": seed,
        "log_level": "WARNING",
    }
    settings = SandboxSettings(**(values | overrides))
    app = create_app(settings)
    app.state.auth_settings = auth or AuthSettings(data_dir=data_dir / "auth")
    if subscriptions is not None:
        app.state.subscription_settings = subscriptions
    async with serve(app, port) as url:
        headers = {"Authorization": f"Bearer {settings.admin_token}"}
        async with httpx.AsyncClient(base_url=url, headers=headers, timeout=30) as admin:
            yield RunningSandbox(app=app, url=url, admin=admin)


_BACKPORT_SD = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/"


def backport_subscription(
    topic: str,
    endpoint: str,
    *,
    content: str = "id-only",
    patient: str | None = None,
    heartbeat_s: int | None = None,
    timeout_s: int | None = None,
    max_count: int | None = None,
    headers: Iterable[str] = (),
    status: str = "requested",
) -> dict[str, Any]:
    """A backport-profile rest-hook Subscription on a topic (canonical or sandbox topic id)."""
    canonical = (
        topic if "/" in topic else f"http://portal.example.org/fhir/SubscriptionTopic/{topic}"
    )
    channel: dict[str, Any] = {
        "type": "rest-hook",
        "endpoint": endpoint,
        "payload": "application/fhir+json",
        "_payload": {
            "extension": [{"url": _BACKPORT_SD + "backport-payload-content", "valueCode": content}]
        },
    }
    extensions = []
    if heartbeat_s is not None:
        extensions.append(
            {"url": _BACKPORT_SD + "backport-heartbeat-period", "valueUnsignedInt": heartbeat_s}
        )
    if timeout_s is not None:
        extensions.append({"url": _BACKPORT_SD + "backport-timeout", "valueUnsignedInt": timeout_s})
    if max_count is not None:
        extensions.append(
            {"url": _BACKPORT_SD + "backport-max-count", "valuePositiveInt": max_count}
        )
    if extensions:
        channel["extension"] = extensions
    if headers:
        channel["header"] = list(headers)
    subscription: dict[str, Any] = {
        "resourceType": "Subscription",
        "meta": {"profile": [_BACKPORT_SD + "backport-subscription"]},
        "status": status,
        "reason": "test",
        "criteria": canonical,
        "channel": channel,
    }
    if patient is not None:
        resource_type = {
            "diagnosticreport-final": "DiagnosticReport",
            "observation-final": "Observation",
            "medicationrequest-change": "MedicationRequest",
            "appointment-status": "Appointment",
            "slot-change": "Slot",
            "communication-patient": "Communication",
        }.get(canonical.rsplit("/", 1)[-1], "Resource")
        subscription["_criteria"] = {
            "extension": [
                {
                    "url": _BACKPORT_SD + "backport-filter-criteria",
                    "valueString": f"{resource_type}?patient=Patient/{patient}",
                }
            ]
        }
    return subscription
