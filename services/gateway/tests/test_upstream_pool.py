"""The gateway's pooled client keeps its connection slots when callers give up.

httpcore 1.0.9 hands a request waiting in its pool a new connection when another request's
connection closes; if the waiting request is cancelled before it runs, that connection
stays in the pool for ever, "connecting", holding a slot (encode/httpcore#1093). With every
slot lost this way the gateway answered 504 to every call while the services were idle.
Here a real HTTP server closes each connection after its answer, and the pool has one slot,
so one cancelled waiter is enough to show it.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from typing import Any

import pytest

from gateway.settings import Settings
from gateway.upstream import Upstreams, pooled_client
from servicekit.identity import ServiceTokens
from servicekit.testing import eventually


@pytest.fixture
async def server() -> AsyncIterator[tuple[str, asyncio.Event, list[bytes]]]:
    """HTTP/1.1 on a free port: `/slow` answers once the event is set; every answer closes
    its connection (as a server does that restarts, or limits requests per connection).
    The request lines it received are listed."""
    release = asyncio.Event()
    received: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        line = await reader.readline()
        received.append(line)
        while (await reader.readline()) not in (b"\r\n", b""):
            pass
        if b" /slow " in line:
            await release.wait()
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n"
            b"Connection: close\r\n\r\n[]"
        )
        await writer.drain()
        writer.close()

    listener = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", release, received
    finally:
        listener.close()
        await listener.wait_closed()


async def test_a_caller_cancelled_as_its_connection_is_assigned_does_not_lose_the_slot(
    server: tuple[str, asyncio.Event, list[bytes]],
) -> None:
    url, release, _received = server
    settings = Settings(records_url=url, upstream_max_connections=1, upstream_timeout_s=2.0)
    async with pooled_client(settings) as http:
        upstreams = Upstreams(settings, http, ServiceTokens.of(settings))
        waiting: list[asyncio.Task[object]] = []

        async def first_then_cancel_the_waiter() -> object:
            answer = await upstreams.get("records", "/slow")
            # The waiter was just handed the slot; its client gives up at this moment.
            waiting[0].cancel()
            return answer

        first = asyncio.create_task(first_then_cancel_the_waiter())
        await asyncio.sleep(0.2)  # the first call holds the only slot
        waiting.append(asyncio.create_task(upstreams.get("records", "/waiter")))
        await asyncio.sleep(0.2)  # the second one waits for it
        release.set()
        assert await first == []
        with pytest.raises(asyncio.CancelledError):
            await waiting[0]

        # The slot is free again: later calls are answered, not refused for want of a slot.
        for _ in range(3):
            assert await upstreams.get("records", "/later") == []


async def test_a_caller_that_gives_up_while_waiting_for_a_slot_sends_nothing(
    server: tuple[str, asyncio.Event, list[bytes]],
) -> None:
    url, release, received = server
    settings = Settings(records_url=url, upstream_max_connections=1, upstream_timeout_s=2.0)
    async with pooled_client(settings) as http:
        upstreams = Upstreams(settings, http, ServiceTokens.of(settings))
        first = asyncio.create_task(upstreams.get("records", "/slow"))
        await asyncio.sleep(0.2)  # the first call holds the only slot
        waiter = asyncio.create_task(upstreams.get("records", "/gave-up"))
        await asyncio.sleep(0.2)
        waiter.cancel()  # its client went away before a slot was free
        with pytest.raises(asyncio.CancelledError):
            await waiter
        release.set()
        assert await first == []
        assert await upstreams.get("records", "/later") == []
    assert not any(b"/gave-up" in line for line in received)


async def test_a_service_holding_every_connection_of_its_pool_does_not_hold_up_another(
    server: tuple[str, asyncio.Event, list[bytes]],
) -> None:
    # Each origin has its own pool: the records service hanging on to its one connection
    # leaves the scheduling service's calls free (with one shared pool they waited for
    # the slot and failed with 504).
    records_url, release, received = server
    other = await asyncio.start_server(_answer_empty_list, "127.0.0.1", 0)
    scheduling_url = f"http://127.0.0.1:{other.sockets[0].getsockname()[1]}"
    settings = Settings(
        records_url=records_url,
        scheduling_url=scheduling_url,
        upstream_max_connections=1,
        upstream_timeout_s=2.0,
    )
    try:
        async with pooled_client(settings) as http:
            upstreams = Upstreams(settings, http, ServiceTokens.of(settings))
            held = asyncio.create_task(upstreams.get("records", "/slow"))

            async def records_holds_its_only_connection() -> bool:
                return any(b" /slow " in line for line in received)

            await eventually(records_holds_its_only_connection, timeout=10)
            assert await upstreams.get("scheduling", "/patients/p/appointments") == []
            assert not held.done()
            release.set()
            assert await held == []
    finally:
        other.close()
        await other.wait_closed()


async def _answer_empty_list(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while (await reader.readline()) not in (b"\r\n", b""):
        pass
    writer.write(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n"
        b"Connection: close\r\n\r\n[]"
    )
    await writer.drain()
    writer.close()


async def test_new_origins_reuse_one_tls_context(
    server: tuple[str, asyncio.Event, list[bytes]], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every pool httpx builds without a TLS context loads the whole CA bundle (~0.1 s of
    # blocked event loop, seen in the lab benchmark's profile at 3% of the gateway).
    records_url, _release, _received = server
    other = await asyncio.start_server(_answer_empty_list, "127.0.0.1", 0)
    scheduling_url = f"http://127.0.0.1:{other.sockets[0].getsockname()[1]}"
    settings = Settings(records_url=records_url, scheduling_url=scheduling_url)
    loads: list[object] = []
    original = ssl.SSLContext.load_verify_locations

    def counting(self: ssl.SSLContext, *args: Any, **kwargs: Any) -> None:
        loads.append(args or kwargs)
        original(self, *args, **kwargs)

    monkeypatch.setattr(ssl.SSLContext, "load_verify_locations", counting)
    try:
        async with pooled_client(settings) as http:
            upstreams = Upstreams(settings, http, ServiceTokens.of(settings))
            before = len(loads)
            assert await upstreams.get("records", "/later") == []
            assert await upstreams.get("scheduling", "/patients/p/appointments") == []
            assert len(loads) == before
    finally:
        other.close()
        await other.wait_closed()
