"""Calls from the gateway to the services that own the data (HTTP, per-call timeouts).

The pooled client sits on `GuardedTransport`, over one `servicekit.http11` transport per
origin (a service, the EHR): keep-alive HTTP/1.1 connections parsed by httptools. Under
benchmark 4 httpcore's pool and connections (anyio streams, h11, a socket poll and a walk
of every pooled connection per request) were a quarter of the gateway's CPU.

`GuardedTransport` admits at most `UPSTREAM_MAX_CONNECTIONS` calls per origin at once
(our own semaphore, which a cancelled waiter cannot leak; httpcore 1.0.9 lost a pool slot
for good when a waiting request was cancelled as it was handed a connection,
encode/httpcore#1093), and a caller's cancellation never reaches the transport: the call
runs to its end (bounded by the client's timeouts) in a task of its own, so a burst of
clients that give up cannot leave connections in an unknown state. Each origin has its
own slots, so one slow service does not hold up calls to the others. The transports share
one TLS context: httpx builds a new one (loading the whole CA bundle, ~0.1 s of blocked
event loop) for every transport it is not handed one.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pydantic_core
from fastapi.responses import JSONResponse

from gateway.settings import Settings
from servicekit.http11 import Http11Transport
from servicekit.identity import ServiceTokens


class _OriginPool:
    """The connections to one origin and the slots admitting calls to them."""

    def __init__(self, limits: httpx.Limits, tls: ssl.SSLContext) -> None:
        self.transport = Http11Transport(ssl_context=tls)
        self.slots = asyncio.Semaphore(limits.max_connections or 100)


class GuardedTransport(httpx.AsyncBaseTransport):
    """An HTTP transport whose slots survive cancellation and pool timeouts, with
    connections and slots per origin."""

    def __init__(self, limits: httpx.Limits) -> None:
        self._limits = limits
        self._tls = httpx.create_ssl_context()
        self._pools: dict[tuple[bytes, bytes, int | None], _OriginPool] = {}
        self._abandoned: set[asyncio.Task[None]] = set()

    def _pool(self, url: httpx.URL) -> _OriginPool:
        origin = (url.raw_scheme, url.raw_host, url.port)
        pool = self._pools.get(origin)
        if pool is None:
            pool = self._pools[origin] = _OriginPool(self._limits, self._tls)
        return pool

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send `request` once a slot is free; a cancelled caller leaves the call to finish
        and release its slot on its own."""
        admitted = asyncio.Event()
        call = asyncio.ensure_future(self._send(request, admitted))
        try:
            return await asyncio.shield(call)
        except asyncio.CancelledError:
            if not admitted.is_set():
                # Still waiting for a slot: safe to cancel (wait_for hands back a slot it
                # got at that moment), and nobody wants the answer.
                call.cancel()
            cleanup = asyncio.create_task(_discard(call))
            self._abandoned.add(cleanup)
            cleanup.add_done_callback(self._abandoned.discard)
            raise

    async def _send(self, request: httpx.Request, admitted: asyncio.Event) -> httpx.Response:
        pool = self._pool(request.url)
        timeout = request.extensions.get("timeout", {}).get("pool")
        try:
            # wait_for gives a slot acquired at the moment of the timeout back.
            await asyncio.wait_for(pool.slots.acquire(), timeout)
        except TimeoutError as exc:
            raise httpx.PoolTimeout("no connection slot free in time", request=request) from exc
        admitted.set()
        try:
            response = await pool.transport.handle_async_request(request)
        except BaseException:
            pool.slots.release()
            raise
        return httpx.Response(
            status_code=response.status_code,
            headers=response.headers,
            stream=_Releasing(response.stream, pool.slots),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        """Close every pool (abandoned calls end with them)."""
        for pool in list(self._pools.values()):
            await pool.transport.aclose()


class _Releasing(httpx.AsyncByteStream):
    """A response body that gives its slot back when closed (once)."""

    def __init__(
        self, stream: httpx.SyncByteStream | httpx.AsyncByteStream, slots: asyncio.Semaphore
    ) -> None:
        assert isinstance(stream, httpx.AsyncByteStream)
        self._stream = stream
        self._slots: asyncio.Semaphore | None = slots

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._stream:
            yield chunk

    async def aclose(self) -> None:
        try:
            await self._stream.aclose()
        finally:
            if self._slots is not None:
                self._slots.release()
                self._slots = None


async def _discard(call: asyncio.Future[httpx.Response]) -> None:
    """Wait for a call nobody waits for any more and close its response."""
    try:
        response = await call
    except (Exception, asyncio.CancelledError):
        return
    await response.aclose()


def pooled_client(
    settings: Settings, mounts: dict[str, httpx.AsyncBaseTransport] | None = None
) -> httpx.AsyncClient:
    """The gateway's one HTTP client (services, JWKS), on a `GuardedTransport`; `mounts`
    route some URLs elsewhere (tests: in-process services)."""
    limits = httpx.Limits(max_connections=settings.upstream_max_connections)
    return httpx.AsyncClient(
        timeout=settings.upstream_timeout_s, transport=GuardedTransport(limits), mounts=mounts
    )


class UpstreamError(Exception):
    """A service did not answer usefully: `status` is what the patient should get."""

    def __init__(
        self, service: str, status: int, detail: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(f"{service}: {detail}")
        self.service = service
        self.status = status
        self.detail = detail
        self.headers = headers or {}


# Response headers of a service that the client of the gateway should see.
PASSED_HEADERS = frozenset({"idempotent-replayed", "content-type", "retry-after"})


@dataclass(frozen=True)
class Forwarded:
    """A service's answer to pass on to the patient as it is."""

    status: int
    body: Any
    headers: dict[str, str]

    def response(self) -> JSONResponse:
        """The answer as the gateway's response (problem+json stays problem+json)."""
        media = self.headers.get("content-type", "application/json").split(";")[0]
        extra = {k: v for k, v in self.headers.items() if k.lower() != "content-type"}
        return JSONResponse(self.body, status_code=self.status, headers=extra, media_type=media)


class Upstreams:
    """One pooled HTTP client for every owning service; each call carries a service token
    for the service it calls (`servicekit.identity`)."""

    def __init__(
        self, settings: Settings, client: httpx.AsyncClient, tokens: ServiceTokens
    ) -> None:
        self.client = client
        self.tokens = tokens
        self.timeout = settings.upstream_timeout_s
        self.urls = {
            "records": settings.records_url.rstrip("/"),
            "scheduling": settings.scheduling_url.rstrip("/"),
            "messaging": settings.messaging_url.rstrip("/"),
            "triage": settings.triage_url.rstrip("/"),
        }

    async def request(
        self,
        service: str,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Any = None,
        headers: dict[str, str] | None = None,
    ) -> Any:
        """Call a service; 404, 409, 413, 415, 422 and 429 (with its Retry-After) pass
        through, anything else unusable is a 502/503/504."""
        response = await self._answered(service, method, path, json, params, headers)
        try:
            # pydantic-core's parser (Rust): the standard library's was the gateway's
            # largest cost under benchmark 4 (the summary's parts).
            return pydantic_core.from_json(response.content)
        except ValueError as exc:
            raise UpstreamError(service, 502, "answered something unreadable") from exc

    async def _answered(
        self,
        service: str,
        method: str,
        path: str,
        json: Any,
        params: Any,
        headers: dict[str, str] | None,
    ) -> httpx.Response:
        url = self.urls[service] + path
        try:
            response = await self.client.request(
                method,
                url,
                json=json,
                params=params,
                headers={**(headers or {}), **self.tokens.headers(service)},
                timeout=self.timeout,
            )
        except httpx.TimeoutException as exc:
            raise UpstreamError(service, 504, "did not answer in time") from exc
        except httpx.HTTPError as exc:
            raise UpstreamError(service, 503, "is unavailable") from exc
        if response.status_code == 404:
            raise UpstreamError(service, 404, "not found")
        if response.status_code in (409, 413, 415, 422):
            raise UpstreamError(service, response.status_code, _detail(response))
        if response.status_code == 429:
            retry = response.headers.get("Retry-After")
            headers = {"Retry-After": retry} if retry else None
            raise UpstreamError(service, 429, _detail(response), headers)
        if response.status_code >= 400:
            raise UpstreamError(service, 502, f"answered {response.status_code}")
        return response

    async def forward(
        self,
        service: str,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Any = None,
        headers: dict[str, str] | None = None,
    ) -> Forwarded:
        """Call a service for a patient's command and keep its answer: the status (201, 202,
        a replayed 201...), the body and the headers that matter to the client; 4xx answers
        (problem details) pass through too. Anything unusable is an `UpstreamError`."""
        url = self.urls[service] + path
        try:
            response = await self.client.request(
                method,
                url,
                json=json,
                params=params,
                headers={**(headers or {}), **self.tokens.headers(service)},
                timeout=self.timeout,
            )
        except httpx.TimeoutException as exc:
            raise UpstreamError(service, 504, "did not answer in time") from exc
        except httpx.HTTPError as exc:
            raise UpstreamError(service, 503, "is unavailable") from exc
        if response.status_code >= 500 or response.status_code in (401, 403):
            raise UpstreamError(service, 502, f"answered {response.status_code}")
        try:
            body = response.json()
        except ValueError as exc:
            raise UpstreamError(service, 502, "answered something unreadable") from exc
        kept = {k: v for k, v in response.headers.items() if k.lower() in PASSED_HEADERS}
        return Forwarded(response.status_code, body, kept)

    async def get(self, service: str, path: str, params: Any = None) -> Any:
        """GET JSON from a service."""
        return await self.request(service, "GET", path, params=params)

    async def get_json_bytes(self, service: str, path: str, params: Any = None) -> bytes:
        """GET a service's JSON answer as the bytes it sent, for a read the gateway passes
        on unchanged: parsing it and writing it again was a third of the gateway's CPU
        under benchmark 4 (py-spy: `json.loads` 23%, the response's serialisation 9%).
        An answer that is not JSON (by its content type) is a 502, as an unreadable one is
        for `get`."""
        response = await self._answered(service, "GET", path, None, params, None)
        media_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
        if media_type != "application/json" and not media_type.endswith("+json"):
            raise UpstreamError(service, 502, "answered something unreadable")
        return response.content

    async def get_bytes(self, service: str, path: str) -> tuple[bytes, str]:
        """GET a document's content and its content type (errors as `request` maps them)."""
        url = self.urls[service] + path
        try:
            response = await self.client.get(
                url, headers=self.tokens.headers(service), timeout=self.timeout
            )
        except httpx.TimeoutException as exc:
            raise UpstreamError(service, 504, "did not answer in time") from exc
        except httpx.HTTPError as exc:
            raise UpstreamError(service, 503, "is unavailable") from exc
        if response.status_code == 404:
            raise UpstreamError(service, 404, "not found")
        if response.status_code >= 400:
            raise UpstreamError(service, 502, f"answered {response.status_code}")
        content_type = response.headers.get("content-type", "application/octet-stream")
        return response.content, content_type


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return "invalid request"
    return str(body.get("detail") or body.get("title") or "invalid request")
