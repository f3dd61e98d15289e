"""Reads the gateway passes on: the owning service's JSON as it sent it, and a 502 for an
answer that is not JSON (a real HTTP server on a free port)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from gateway.settings import Settings
from gateway.upstream import UpstreamError, Upstreams, pooled_client
from servicekit.identity import ServiceTokens

# Not how a JSON writer would write it again: spaces, a trailing zero, non-ASCII text.
BODY = '{"items": [{"value": 5.90, "display": "Hémoglobine"}], "next_cursor": null}'.encode()

ANSWERS = {
    b"/json": (b"application/json", BODY),
    b"/fhir": (b"application/fhir+json; charset=utf-8", BODY),
    b"/html": (b"text/html", b"<html>proxy error page</html>"),
    b"/broken": (b"application/json", b"{not json"),
}


@pytest.fixture
async def upstreams() -> AsyncIterator[Upstreams]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        path = (await reader.readline()).split(b" ")[1]
        while (await reader.readline()) not in (b"\r\n", b""):
            pass
        content_type, body = ANSWERS[path]
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: "
            + content_type
            + b"\r\nContent-Length: "
            + str(len(body)).encode()
            + b"\r\nConnection: close\r\n\r\n"
            + body
        )
        await writer.drain()
        writer.close()

    listener = await asyncio.start_server(handle, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{listener.sockets[0].getsockname()[1]}"
    settings = Settings(records_url=url, upstream_timeout_s=5.0)
    try:
        async with pooled_client(settings) as http:
            yield Upstreams(settings, http, ServiceTokens.of(settings))
    finally:
        listener.close()
        await listener.wait_closed()


async def test_a_read_is_passed_on_as_the_service_wrote_it(upstreams: Upstreams) -> None:
    assert await upstreams.get_json_bytes("records", "/json") == BODY
    assert await upstreams.get_json_bytes("records", "/fhir") == BODY
    assert await upstreams.get("records", "/json") == {
        "items": [{"value": 5.9, "display": "Hémoglobine"}],
        "next_cursor": None,
    }


@pytest.mark.parametrize("path", ["/html", "/broken"])
async def test_an_answer_that_is_not_json_is_a_bad_gateway(upstreams: Upstreams, path: str) -> None:
    if path == "/html":
        with pytest.raises(UpstreamError) as raised:
            await upstreams.get_json_bytes("records", path)
        assert raised.value.status == 502
    with pytest.raises(UpstreamError) as raised:
        await upstreams.get("records", path)
    assert raised.value.status == 502
