"""`servicekit.http11`: httpx on our own HTTP/1.1 connections, against real sockets.

Each server here is a small asyncio server speaking HTTP/1.1 by hand, so the tests can
say exactly what is on the wire: several responses on one connection, chunked and
close-delimited bodies, a connection closed while idle or mid-answer, an answer that
never comes.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import httpx
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from servicekit import telemetry
from servicekit.http11 import Http11Transport

Handler = Callable[["Wire", bytes, dict[bytes, bytes], bytes], Awaitable[None]]


@dataclass
class Wire:
    """One accepted connection, as the server sees it."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()


@dataclass
class Server:
    url: str
    connections: int = 0
    requests: list[tuple[bytes, dict[bytes, bytes], bytes]] = field(default_factory=list)


async def _read_request(reader: asyncio.StreamReader) -> tuple[bytes, dict[bytes, bytes], bytes]:
    line = await reader.readline()
    if not line:
        raise EOFError
    headers: dict[bytes, bytes] = {}
    while (header := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = header.partition(b":")
        headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get(b"content-length", b"0")))
    return line.strip(), headers, body


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Handler], Awaitable[Server]]]:
    listeners: list[asyncio.Server] = []

    async def start(handler: Handler) -> Server:
        server = Server("")

        async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            server.connections += 1
            wire = Wire(reader, writer)
            try:
                while True:
                    try:
                        line, headers, body = await _read_request(reader)
                    except (EOFError, asyncio.IncompleteReadError, ConnectionError):
                        return
                    server.requests.append((line, headers, body))
                    await handler(wire, line, headers, body)
                    if writer.is_closing():
                        return
            finally:
                writer.close()

        listener = await asyncio.start_server(connection, "127.0.0.1", 0)
        listeners.append(listener)
        server.url = f"http://127.0.0.1:{listener.sockets[0].getsockname()[1]}"
        return server

    yield start
    for listener in listeners:
        listener.close()


def _json(status: int, body: object, extra: bytes = b"") -> bytes:
    data = json.dumps(body).encode()
    return (
        f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\n".encode()
        + extra
        + b"\r\n"
        + data
    )


async def _echo(wire: Wire, line: bytes, headers: dict[bytes, bytes], body: bytes) -> None:
    await wire.send(_json(200, {"line": line.decode(), "body": body.decode()}))


def _client(**kwargs: object) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=Http11Transport(), timeout=2.0, **kwargs)  # type: ignore[arg-type]


async def test_requests_share_one_kept_alive_connection(
    serve: Callable[[Handler], Awaitable[Server]],
) -> None:
    server = await serve(_echo)
    async with _client() as http:
        for n in range(10):
            response = await http.get(f"{server.url}/items?n={n}")
            assert response.status_code == 200
            assert response.json()["line"] == f"GET /items?n={n} HTTP/1.1"
        posted = await http.post(f"{server.url}/things", json={"a": 1})
        assert posted.json()["body"] == '{"a":1}'
    assert server.connections == 1
    _line, headers, body = server.requests[-1]
    assert headers[b"content-type"] == b"application/json"
    assert headers[b"content-length"] == str(len(body)).encode()
    assert headers[b"host"] == server.url.removeprefix("http://").encode()


async def test_concurrent_requests_each_get_their_own_answer(
    serve: Callable[[Handler], Awaitable[Server]],
) -> None:
    async def slow_echo(wire: Wire, line: bytes, headers: dict[bytes, bytes], body: bytes) -> None:
        await asyncio.sleep(0.01)
        await _echo(wire, line, headers, body)

    server = await serve(slow_echo)
    async with _client() as http:
        answers = await asyncio.gather(*(http.get(f"{server.url}/n/{n}") for n in range(20)))
        again = await asyncio.gather(*(http.get(f"{server.url}/m/{n}") for n in range(20)))
    assert [a.json()["line"] for a in answers] == [f"GET /n/{n} HTTP/1.1" for n in range(20)]
    assert [a.json()["line"] for a in again] == [f"GET /m/{n} HTTP/1.1" for n in range(20)]
    # The second round reused the first round's connections.
    assert server.connections == 20


async def test_chunked_and_close_delimited_bodies(
    serve: Callable[[Handler], Awaitable[Server]],
) -> None:
    big = b"x" * 600_000  # above the read-pause mark: flow control must resume reading

    async def bodies(wire: Wire, line: bytes, headers: dict[bytes, bytes], body: bytes) -> None:
        if b"/chunked" in line:
            await wire.send(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
            )
        elif b"/until-close" in line:
            await wire.send(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + big)
            wire.writer.close()
        else:
            await wire.send(b"HTTP/1.1 204 No Content\r\n\r\n")

    server = await serve(bodies)
    async with _client() as http:
        assert (await http.get(f"{server.url}/chunked")).content == b"hello world"
        assert (await http.get(f"{server.url}/empty")).status_code == 204
        assert (await http.get(f"{server.url}/until-close")).content == big
        assert (await http.get(f"{server.url}/chunked")).content == b"hello world"
    # The close-delimited answer ended its connection; the others were kept.
    assert server.connections == 2


async def test_a_connection_the_server_closed_while_idle_is_not_reused(
    serve: Callable[[Handler], Awaitable[Server]],
) -> None:
    async def answer_then_hang_up(
        wire: Wire, line: bytes, headers: dict[bytes, bytes], body: bytes
    ) -> None:
        await _echo(wire, line, headers, body)
        wire.writer.close()  # no Connection: close header, as after a keep-alive timeout

    server = await serve(answer_then_hang_up)
    async with _client() as http:
        for n in range(3):
            first = await http.get(f"{server.url}/a/{n}")
            assert first.status_code == 200
            await asyncio.sleep(0.05)  # the FIN arrives while the connection is idle
        assert (await http.post(f"{server.url}/b", json={})).status_code == 200
    assert server.connections == 4


def _hang_up_on_the_second_request(seen: list[bytes]) -> Handler:
    """Echo every request but the second, for which the server reads the request and
    drops the connection without answering; the request lines are listed in `seen`."""

    async def handler(wire: Wire, line: bytes, headers: dict[bytes, bytes], body: bytes) -> None:
        seen.append(line)
        if len(seen) == 2:
            wire.writer.transport.abort()
            return
        await _echo(wire, line, headers, body)

    return handler


async def test_an_idempotent_request_is_resent_once_if_its_reused_connection_was_closed(
    serve: Callable[[Handler], Awaitable[Server]],
) -> None:
    # The server closes a kept-alive connection just as the client sends on it (the race
    # of keep-alive timeouts): it reads the request and hangs up without answering.
    seen: list[bytes] = []
    server = await serve(_hang_up_on_the_second_request(seen))
    async with _client() as http:
        assert (await http.get(f"{server.url}/first")).status_code == 200
        assert (await http.get(f"{server.url}/second")).json()["line"] == "GET /second HTTP/1.1"
    assert seen == [b"GET /first HTTP/1.1", b"GET /second HTTP/1.1", b"GET /second HTTP/1.1"]


async def test_a_post_on_a_connection_closed_unanswered_is_not_resent(
    serve: Callable[[Handler], Awaitable[Server]],
) -> None:
    seen: list[bytes] = []
    server = await serve(_hang_up_on_the_second_request(seen))
    async with _client() as http:
        assert (await http.get(f"{server.url}/first")).status_code == 200
        with pytest.raises(httpx.RemoteProtocolError):
            await http.post(f"{server.url}/book", json={"slot": "s1"})
        # The pool recovers: the next request gets a new connection.
        assert (await http.get(f"{server.url}/third")).status_code == 200
    assert seen.count(b"POST /book HTTP/1.1") == 1


async def test_an_answer_cut_off_midway_is_an_error_and_its_connection_dropped(
    serve: Callable[[Handler], Awaitable[Server]],
) -> None:
    async def cut(wire: Wire, line: bytes, headers: dict[bytes, bytes], body: bytes) -> None:
        if b"/cut" in line:
            await wire.send(b'HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{"partial":')
            wire.writer.close()
            return
        await _echo(wire, line, headers, body)

    server = await serve(cut)
    async with _client() as http:
        with pytest.raises(httpx.RemoteProtocolError):
            await http.get(f"{server.url}/cut")
        assert (await http.get(f"{server.url}/after")).status_code == 200
    assert server.connections == 2


def _echo_late(path: bytes, seconds: float) -> Handler:
    """Echo every request, those to `path` only after `seconds`."""

    async def handler(wire: Wire, line: bytes, headers: dict[bytes, bytes], body: bytes) -> None:
        if path in line:
            await asyncio.sleep(seconds)
        await _echo(wire, line, headers, body)

    return handler


async def test_timeouts_and_refusals_are_httpx_errors(
    serve: Callable[[Handler], Awaitable[Server]],
) -> None:
    server = await serve(_echo_late(b"/never", 10))
    async with _client() as http:
        with pytest.raises(httpx.ReadTimeout):
            await http.get(f"{server.url}/never", timeout=0.2)
        # The timed-out connection is not handed to the next request (its answer would
        # have been the late one).
        assert (await http.get(f"{server.url}/now")).json()["line"] == "GET /now HTTP/1.1"
        closed = await asyncio.start_server(_echo_never, "127.0.0.1", 0)
        port = closed.sockets[0].getsockname()[1]
        closed.close()
        await closed.wait_closed()
        with pytest.raises(httpx.ConnectError):
            await http.get(f"http://127.0.0.1:{port}/")
        with pytest.raises(httpx.UnsupportedProtocol):
            await http.get("ftp://127.0.0.1/")


async def _echo_never(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.close()


async def test_a_cancelled_request_drops_its_connection(
    serve: Callable[[Handler], Awaitable[Server]],
) -> None:
    server = await serve(_echo_late(b"/slow", 0.3))
    async with _client() as http:
        call = asyncio.create_task(http.get(f"{server.url}/slow"))
        await asyncio.sleep(0.05)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        # Not the cancelled call's late answer, but this one's.
        assert (await http.get(f"{server.url}/next")).json()["line"] == "GET /next HTTP/1.1"
    assert server.connections == 2


async def test_interim_responses_are_skipped(serve: Callable[[Handler], Awaitable[Server]]) -> None:
    async def hints(wire: Wire, line: bytes, headers: dict[bytes, bytes], body: bytes) -> None:
        await wire.send(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n")
        await _echo(wire, line, headers, body)

    server = await serve(hints)
    async with _client() as http:
        first = await http.get(f"{server.url}/one")
        second = await http.get(f"{server.url}/two")
    assert (first.status_code, first.json()["line"]) == (200, "GET /one HTTP/1.1")
    assert "link" not in first.headers
    assert second.json()["line"] == "GET /two HTTP/1.1"


async def test_header_injection_is_refused(serve: Callable[[Handler], Awaitable[Server]]) -> None:
    server = await serve(_echo)
    async with _client() as http:
        with pytest.raises(httpx.LocalProtocolError):
            await http.get(server.url, headers={"x-note": "a\r\nx-admin: yes"})
    assert server.requests == []


async def test_the_opentelemetry_instrumentation_traces_calls_and_propagates_the_context(
    serve: Callable[[Handler], Awaitable[Server]],
) -> None:
    # The transport is an httpx.AsyncHTTPTransport: the instrumentation's wrapper runs.
    # The tracer provider is global, one per process, as in a service.
    telemetry.setup_tracing("servicekit-tests")
    telemetry.instrument_http_clients()
    provider = trace.get_tracer_provider()
    assert isinstance(provider, TracerProvider)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    server = await serve(_echo)
    async with _client() as http:
        with telemetry.tracer("test").start_as_current_span("caller") as caller:
            await http.get(f"{server.url}/traced")
    _, headers, _ = server.requests[-1]
    trace_id = format(caller.get_span_context().trace_id, "032x")
    assert trace_id in headers[b"traceparent"].decode()
    clients = [s for s in exporter.get_finished_spans() if s.kind == trace.SpanKind.CLIENT]
    assert [s.context.trace_id for s in clients] == [caller.get_span_context().trace_id]


async def test_it_works_on_uvloop_as_in_the_services() -> None:
    # uvicorn runs the services on uvloop, whose transports are not asyncio's classes.
    import uvloop

    async def journey() -> tuple[int, list[str]]:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while True:
                try:
                    line, _headers, body = await _read_request(reader)
                except (EOFError, asyncio.IncompleteReadError, ConnectionError):
                    break
                writer.write(_json(200, {"line": line.decode(), "body": body.decode()}))
                await writer.drain()
            writer.close()

        listener = await asyncio.start_server(handler, "127.0.0.1", 0)
        url = f"http://127.0.0.1:{listener.sockets[0].getsockname()[1]}"
        try:
            transport = Http11Transport()
            async with httpx.AsyncClient(transport=transport, timeout=2.0) as http:
                lines = [(await http.get(f"{url}/{n}")).json()["line"] for n in range(3)]
                lines.append((await http.post(f"{url}/p", json=[1])).json()["body"])
                return transport.pool.connections_opened, lines
        finally:
            listener.close()

    opened, lines = await asyncio.to_thread(uvloop.run, journey())
    assert lines == ["GET /0 HTTP/1.1", "GET /1 HTTP/1.1", "GET /2 HTTP/1.1", "[1]"]
    assert opened == 1
