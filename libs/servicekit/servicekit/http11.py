"""A light HTTP/1.1 keep-alive transport for httpx: asyncio protocols parsed by httptools.

Why: under benchmark 4 the gateway spent a quarter of its CPU in httpcore's connection
pool and connections (anyio streams, h11's pure-Python parser, a socket poll per reuse,
a walk of every pooled connection per request) to call services on the same host. This
transport keeps httpx's API, its exception types and its OpenTelemetry instrumentation
(`Http11Transport` is an `httpx.AsyncHTTPTransport`, whose `handle_async_request` the
instrumentation wraps; only the pool under it differs), and does the exchange itself:
the request is written in one call, the response is parsed by httptools (the C parser
uvicorn uses) in the protocol's `data_received`, and a finished connection goes back to a
list of idle ones, taken last-in first-out.

What it does not do, on purpose: HTTP/2, proxies, `Expect: 100-continue`, upgrades. A
request body is read whole before it is sent (a retry needs it again; the callers send
small JSON). It does not bound how many connections are open: the caller does
(`gateway.upstream.GuardedTransport` admits at most a pool's size of calls per origin).

A connection the server closed while idle is noticed at once (`connection_lost`) and never
reused. If the server closes one at the very moment it is reused (its keep-alive timeout),
an idempotent request is sent once more on a new connection; a POST is not (the server may
have acted on it) and fails with `httpx.RemoteProtocolError`, as with httpcore.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any, cast

import httpcore
import httptools
import httpx

# Idle connections older than this are closed rather than reused: below uvicorn's default
# keep-alive timeout (5 s), so the server seldom closes one just as it is reused.
KEEPALIVE_EXPIRY_S = 4.0
# At most this many idle connections are kept per origin; more are closed when released.
MAX_IDLE = 100
# Read no more from the socket while this much of a body is waiting to be consumed.
_HIGH_WATER = 256 * 1024
_IDEMPOTENT = frozenset({b"GET", b"HEAD", b"PUT", b"DELETE", b"OPTIONS", b"TRACE"})

Origin = tuple[bytes, bytes, int]


class _Stale(Exception):
    """A reused connection was closed before any byte of the response came."""


class _Exchange:
    """One response as it arrives: status and headers, then body chunks, then the end."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.head: asyncio.Future[None] = loop.create_future()
        self.status = 0
        self.reason = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.chunks: deque[bytes] = deque()
        self.buffered = 0
        self.complete = False
        self.keep_alive = False
        self.error: BaseException | None = None
        self.received_any = False
        self.interim = False
        self._waiter: asyncio.Future[None] | None = None
        self._loop = loop

    def wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def fail(self, error: BaseException) -> None:
        if self.complete or self.error is not None:
            return
        self.error = error
        if not self.head.done():
            self.head.set_exception(error)
            # Retrieved here so an exchange nobody awaits any more logs nothing.
            self.head.exception()
        self.wake()

    async def wait(self, seconds: float | None) -> None:
        """Until more of the body came, it ended, or it failed."""
        self._waiter = self._loop.create_future()
        try:
            await _within(self._waiter, seconds, httpcore.ReadTimeout("timed out reading a body"))
        finally:
            self._waiter = None


async def _within(
    waiter: asyncio.Future[None], seconds: float | None, late: httpcore.TimeoutException
) -> None:
    """Wait for `waiter`; raise `late` if `seconds` pass first (None: no bound)."""
    try:
        async with asyncio.timeout(seconds):
            await waiter
    except TimeoutError as exc:
        raise late from exc


class _Connection(asyncio.Protocol):
    """One HTTP/1.1 connection; one exchange at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.used = False
        self.idle_since = 0.0
        self._exchange: _Exchange | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._paused = False
        self._drained: asyncio.Future[None] | None = None

    # -- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Not an isinstance check: uvloop's transports (the services' loop) have the
        # methods of asyncio.Transport without deriving from it.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        exchange = self._exchange
        if exchange is None or exchange.complete:
            # Bytes nobody asked for (a server's 408 on an idle connection): unusable.
            self.close()
            return
        exchange.received_any = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            exchange.fail(httpcore.RemoteProtocolError(f"invalid HTTP response: {exc}"))
            self.close()

    def eof_received(self) -> bool | None:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        exchange = self._exchange
        if exchange is not None and not exchange.complete:
            if exchange.head.done() and not self._has_length():
                # A body delimited by the end of the connection ends here.
                exchange.complete = True
                exchange.wake()
            elif not exchange.received_any:
                exchange.fail(_Stale())
            else:
                exchange.fail(
                    httpcore.RemoteProtocolError("the server closed the connection mid-response")
                )
        waiter = self._drained
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        waiter = self._drained
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- httptools callbacks ---------------------------------------------------------------

    def on_status(self, status: bytes) -> None:
        assert self._exchange is not None
        self._exchange.reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self._exchange is not None
        self._exchange.headers.append((name, value))

    def on_headers_complete(self) -> None:
        exchange = self._exchange
        assert exchange is not None
        status = self._parser.get_status_code()
        if 100 <= status < 200:
            # An interim response (103 Early Hints...): the real one follows.
            exchange.interim = True
            return
        exchange.status = status
        if not exchange.head.done():
            exchange.head.set_result(None)

    def on_body(self, body: bytes) -> None:
        exchange = self._exchange
        assert exchange is not None
        exchange.chunks.append(body)
        exchange.buffered += len(body)
        if exchange.buffered > _HIGH_WATER and self.transport is not None:
            self.transport.pause_reading()
        exchange.wake()

    def on_message_complete(self) -> None:
        exchange = self._exchange
        assert exchange is not None
        if exchange.interim:
            exchange.interim = False
            exchange.reason = b""
            exchange.headers = []
            return
        exchange.keep_alive = self._parser.should_keep_alive()
        exchange.complete = True
        exchange.wake()

    # -- use -------------------------------------------------------------------------------

    def _has_length(self) -> bool:
        exchange = self._exchange
        assert exchange is not None
        names = {name.lower() for name, _ in exchange.headers}
        return b"content-length" in names or b"transfer-encoding" in names

    def start(self, data: bytes) -> _Exchange:
        """Send a whole request; its response will arrive in the returned exchange."""
        assert self.transport is not None
        assert self._exchange is None
        self.used = True
        self._exchange = _Exchange(asyncio.get_running_loop())
        self.transport.write(data)
        return self._exchange

    async def drain(self, seconds: float | None) -> None:
        """Until the request is handed to the kernel (flow control), or the timeout."""
        if not self._paused or self.closed:
            return
        self._drained = asyncio.get_running_loop().create_future()
        try:
            await _within(self._drained, seconds, httpcore.WriteTimeout("timed out sending"))
        finally:
            self._drained = None

    def consumed(self, size: int) -> None:
        """A consumer took `size` bytes of the body: read again once below the mark."""
        exchange = self._exchange
        if exchange is None:
            return
        was_high = exchange.buffered > _HIGH_WATER
        exchange.buffered -= size
        if was_high and exchange.buffered <= _HIGH_WATER and self.transport is not None:
            self.transport.resume_reading()

    def finish(self) -> bool:
        """The exchange is over: whether the connection can carry another one."""
        exchange = self._exchange
        self._exchange = None
        reusable = (
            exchange is not None
            and exchange.complete
            and exchange.keep_alive
            and exchange.error is None
            and not self.closed
        )
        if reusable:
            self._parser = httptools.HttpResponseParser(self)
        return reusable

    def close(self) -> None:
        """Close the socket (idempotent)."""
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class _Body:
    """A response body as an async iterable that hands its connection back when closed."""

    def __init__(
        self,
        pool: Http11Pool,
        origin: Origin,
        conn: _Connection,
        exchange: _Exchange,
        read: float | None,
    ) -> None:
        self._pool = pool
        self._origin = origin
        self._conn: _Connection | None = conn
        self._exchange = exchange
        self._read_timeout = read

    async def __aiter__(self) -> AsyncIterator[bytes]:
        exchange = self._exchange
        conn = self._conn
        while True:
            if exchange.chunks:
                chunk = exchange.chunks.popleft()
                if conn is not None:
                    conn.consumed(len(chunk))
                yield chunk
                continue
            if exchange.error is not None:
                raise exchange.error
            if exchange.complete:
                return
            await exchange.wait(self._read_timeout)

    async def aclose(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            self._pool.release(self._origin, conn)


class Http11Pool:
    """Keep-alive HTTP/1.1 connections per origin, with httpcore's request/response types
    (the interface `httpx.AsyncHTTPTransport` calls)."""

    def __init__(
        self,
        *,
        ssl_context: ssl.SSLContext | None = None,
        keepalive_expiry: float = KEEPALIVE_EXPIRY_S,
        max_idle: int = MAX_IDLE,
    ) -> None:
        self._ssl = ssl_context
        self._expiry = keepalive_expiry
        self._max_idle = max_idle
        self._idle: dict[Origin, list[_Connection]] = {}
        self._open: set[_Connection] = set()
        self.connections_opened = 0

    async def handle_async_request(self, request: httpcore.Request) -> httpcore.Response:
        """Send `request` and return its response once the headers came (the body streams)."""
        timeouts: dict[str, float | None] = request.extensions.get("timeout", {})
        url = request.url
        scheme = url.scheme.lower()
        if scheme not in (b"http", b"https"):
            raise httpcore.UnsupportedProtocol(f"unsupported scheme {scheme!r}")
        port = url.port or (443 if scheme == b"https" else 80)
        origin: Origin = (scheme, url.host, port)
        stream = request.stream
        assert isinstance(stream, AsyncIterable), "an async client sends async bodies"
        body = b"".join([part async for part in stream])
        data = _serialise(request, body)
        retried = False
        while True:
            conn = self._reused(origin)
            reused = conn is not None
            if conn is None:
                conn = await self._connect(origin, request, timeouts.get("connect"))
            try:
                exchange = conn.start(data)
                await conn.drain(timeouts.get("write"))
                try:
                    async with asyncio.timeout(timeouts.get("read")):
                        await asyncio.shield(exchange.head)
                except TimeoutError as exc:
                    raise httpcore.ReadTimeout("timed out waiting for the response") from exc
            except _Stale:
                self._discard(conn)
                if reused and not retried and request.method in _IDEMPOTENT:
                    retried = True
                    continue
                raise httpcore.RemoteProtocolError(
                    "the server closed the connection without answering"
                ) from None
            except BaseException:
                # Timeout, cancellation, protocol error: the connection's state is unknown.
                self._discard(conn)
                raise
            if request.method == b"HEAD":
                # httptools would wait for the body the headers announce: end it here.
                exchange.complete = True
                exchange.keep_alive = False
            return httpcore.Response(
                status=exchange.status,
                headers=exchange.headers,
                content=_Body(self, origin, conn, exchange, timeouts.get("read")),
                extensions={"http_version": b"HTTP/1.1", "reason_phrase": exchange.reason},
            )

    def _reused(self, origin: Origin) -> _Connection | None:
        idle = self._idle.get(origin)
        if not idle:
            return None
        now = time.monotonic()
        while idle:
            conn = idle.pop()
            if not conn.closed and now - conn.idle_since < self._expiry:
                return conn
            self._discard(conn)
        return None

    async def _connect(
        self, origin: Origin, request: httpcore.Request, seconds: float | None
    ) -> _Connection:
        scheme, host, port = origin
        tls = None
        server_hostname = None
        if scheme == b"https":
            tls = self._ssl or httpx.create_ssl_context()
            sni = request.extensions.get("sni_hostname")
            server_hostname = sni if isinstance(sni, str) else host.decode("ascii")
        conn = _Connection()
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(seconds):
                await loop.create_connection(
                    lambda: conn,
                    host.decode("ascii"),
                    port,
                    ssl=tls,
                    server_hostname=server_hostname,
                )
        except TimeoutError as exc:
            conn.close()
            raise httpcore.ConnectTimeout(f"timed out connecting to port {port}") from exc
        except OSError as exc:
            conn.close()
            raise httpcore.ConnectError(str(exc)) from exc
        self._open.add(conn)
        self.connections_opened += 1
        return conn

    def release(self, origin: Origin, conn: _Connection) -> None:
        """Keep a connection whose exchange ended for the next request, or close it."""
        if not conn.finish():
            self._discard(conn)
            return
        idle = self._idle.setdefault(origin, [])
        if len(idle) >= self._max_idle:
            self._discard(conn)
            return
        conn.idle_since = time.monotonic()
        idle.append(conn)

    def _discard(self, conn: _Connection) -> None:
        conn.close()
        self._open.discard(conn)

    async def aclose(self) -> None:
        """Close every connection, idle or in use."""
        for conn in list(self._open):
            self._discard(conn)
        self._idle.clear()


class Http11Transport(httpx.AsyncHTTPTransport):
    """`httpx.AsyncHTTPTransport` on an `Http11Pool` instead of httpcore's pool.

    httpx's own `handle_async_request` runs unchanged (the request conversion, the mapping
    of httpcore's exceptions to httpx's, and the OpenTelemetry wrapper around it); it calls
    `self._pool`, which httpx 0.28 (pinned) names so."""

    def __init__(self, *, ssl_context: ssl.SSLContext | None = None, **pool: Any) -> None:
        # Not httpx's __init__: it would build an httpcore pool and a TLS context unused.
        self._pool = Http11Pool(ssl_context=ssl_context, **pool)  # type: ignore[assignment]

    @property
    def pool(self) -> Http11Pool:
        """The connections under this transport."""
        pool = self._pool
        assert isinstance(pool, Http11Pool)
        return pool

    async def __aenter__(self) -> Http11Transport:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.pool.aclose()


def _serialise(request: httpcore.Request, body: bytes) -> bytes:
    """The request as bytes on the wire: request line, headers, body."""
    lines = [request.method, b" ", request.url.target, b" HTTP/1.1\r\n"]
    chunked = False
    for name, value in request.headers:
        lower = name.lower()
        if lower == b"transfer-encoding":
            # The body is whole: sent with its length instead.
            chunked = True
            continue
        if lower == b"content-length":
            continue
        if b"\r" in value or b"\n" in value or b"\r" in name or b"\n" in name:
            raise httpcore.LocalProtocolError("a header contains a line break")
        lines += [name, b": ", value, b"\r\n"]
    if body or chunked or request.method in (b"POST", b"PUT", b"PATCH"):
        lines += [b"Content-Length: ", str(len(body)).encode(), b"\r\n"]
    lines.append(b"\r\n")
    lines.append(body)
    return b"".join(lines)
