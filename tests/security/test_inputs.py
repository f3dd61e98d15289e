"""Bounded inputs: oversized and chunked bodies, deep JSON, out-of-range ids and times,
sent over TCP to the gateway and to a domain service (servicekit's limits)."""

from __future__ import annotations

import asyncio
import contextlib
from urllib.parse import urlsplit

import httpx
import pytest

from servicekit.testing import service_headers

from .harness import Attack, Stack

pytestmark = [pytest.mark.integration]
MiB = 1024 * 1024


def _service() -> dict[str, str]:
    """What the gateway presents when it calls scheduling (a fresh token: they live 60 s)."""
    return service_headers("scheduling", caller="gateway")


async def _raw(url: str, head: str, chunks: list[bytes]) -> tuple[int, int]:
    """Send a request head and body chunks as they are (no client-side checks), stop
    sending once the server answers; returns (status, bytes of body sent)."""
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    sent = 0
    status_line = asyncio.ensure_future(reader.readline())
    try:
        writer.write(head.encode())
        await writer.drain()
        for chunk in chunks:
            if status_line.done():
                break
            try:
                writer.write(chunk)
                await writer.drain()
            except ConnectionError:
                break  # the server answered and closed: read what it said
            sent += len(chunk)
        line = await asyncio.wait_for(status_line, timeout=30)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    return int(line.split()[1]), sent


def _head(path: str, host: str, extra: str) -> str:
    return f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n{extra}\r\n"


@pytest.mark.parametrize("target", ["gateway", "scheduling"])
async def test_declared_huge_body_is_refused_before_reading(
    stack: Stack, attack: Attack, target: str
) -> None:
    url = stack.gateway_url if target == "gateway" else stack.scheduling_url
    path = "/v1/me/triage/assess" if target == "gateway" else "/patients/p1/appointments"
    head = _head(path, "x", f"Content-Length: {150 * MiB}\r\n")
    status, sent = await _raw(url, head, [])
    attack(f"{target}: Content-Length 150 MB, no token", "413", str(status))
    assert status == 413
    assert sent == 0


@pytest.mark.parametrize("target", ["gateway", "scheduling"])
async def test_chunked_upload_is_cut_at_the_limit(
    stack: Stack, attack: Attack, target: str
) -> None:
    url = stack.gateway_url if target == "gateway" else stack.scheduling_url
    path = "/v1/me/triage/assess" if target == "gateway" else "/patients/p1/appointments"
    piece = b"a" * (256 * 1024)
    chunk = f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
    head = _head(path, "x", "Transfer-Encoding: chunked\r\n")
    status, sent = await _raw(url, head, [chunk] * 40)  # 10 MiB offered
    attack(f"{target}: chunked 10 MB upload", "413", f"{status} after {sent // MiB} MiB sent")
    assert status == 413


@pytest.mark.parametrize("target", ["gateway", "scheduling"])
async def test_deep_json_is_a_400_not_a_500(stack: Stack, attack: Attack, target: str) -> None:
    deep = "[" * 100_000 + "]" * 100_000
    async with httpx.AsyncClient(timeout=30) as client:
        if target == "gateway":
            token = await stack.linked_token("sec-deep")
            response = await client.post(
                f"{stack.gateway_url}/v1/me/triage/assess",
                content=deep,
                headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
            )
        else:
            response = await client.post(
                f"{stack.scheduling_url}/patients/p1/appointments",
                content=deep,
                headers={"Content-Type": "application/json", **_service()},
            )
    attack(f"{target}: 100k-deep JSON", "400 problem+json", str(response.status_code))
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/problem+json"


async def test_large_json_is_a_413(stack: Stack, attack: Attack) -> None:
    body = '{"text": "' + "a" * (2 * MiB) + '"}'
    async with httpx.AsyncClient(timeout=30) as client:
        response = await client.post(
            f"{stack.scheduling_url}/patients/p1/appointments",
            content=body,
            headers={"Content-Type": "application/json", **_service()},
        )
    attack("scheduling: 2 MB JSON body", "413 problem+json", str(response.status_code))
    assert response.status_code == 413
    assert response.headers["content-type"] == "application/problem+json"


@pytest.mark.parametrize("value", ["9" * 400, "99999999999999999999", "\u00b2", "-1"])
async def test_last_event_id_is_range_checked(stack: Stack, attack: Attack, value: str) -> None:
    token = await stack.linked_token("sec-sse")
    auth = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=10) as client:
        async with client.stream(
            "GET", "/v1/me/events", headers={**auth, "Last-Event-ID": value.encode()}
        ) as bad:
            status = bad.status_code
        async with client.stream(
            "GET", "/v1/me/events", headers={**auth, "Last-Event-ID": "0"}
        ) as good:
            first = ""
            async for line in good.aiter_lines():
                first = line
                break
    shown = value if len(value) < 24 else f"{value[:8]}... ({len(value)} digits)"
    attack(f"Last-Event-ID {shown!r}", "400, stream still works", f"{status}, then {first!r}")
    assert status == 400
    assert good.status_code == 200
    assert first.startswith("retry:")


async def test_slots_far_in_the_future(stack: Stack, attack: Attack) -> None:
    token = await stack.linked_token("sec-slots")
    params = {"start": "9999-12-31T00:00:00Z"}
    async with httpx.AsyncClient(timeout=10) as client:
        via_gateway = await client.get(
            f"{stack.gateway_url}/v1/slots",
            params=params,
            headers={"Authorization": f"Bearer {token}"},
        )
        direct = await client.get(
            f"{stack.scheduling_url}/slots", params=params, headers=_service()
        )
    attack(
        "slots from 9999-12-31 (gateway / scheduling)",
        "422 / 422",
        f"{via_gateway.status_code} / {direct.status_code}",
    )
    assert via_gateway.status_code == 422
    assert direct.status_code == 422


async def test_huge_ids_in_ops_routes(stack: Stack, attack: Attack) -> None:
    token = stack.scheduling.settings.ops_token
    async with httpx.AsyncClient(base_url=stack.scheduling_url, timeout=10) as client:
        huge = await client.post(
            "/ops/dead-letters/99999999999999999999999999/redrive",
            headers={"Authorization": f"Bearer {token}"},
        )
        negative = await client.post(
            "/ops/dead-letters/-5/discard", headers={"Authorization": f"Bearer {token}"}
        )
    attack(
        "ops: dead-letter id 10^26 / -5",
        "422 / 422",
        f"{huge.status_code} / {negative.status_code}",
    )
    assert huge.status_code == 422
    assert negative.status_code == 422


async def test_huge_path_ids(stack: Stack, attack: Attack) -> None:
    token = await stack.linked_token("sec-ids")
    huge = "9" * 5000
    async with httpx.AsyncClient(timeout=10) as client:
        via_gateway = await client.get(
            f"{stack.gateway_url}/v1/me/appointments/{huge}",
            headers={"Authorization": f"Bearer {token}"},
        )
        direct = await client.get(
            f"{stack.scheduling_url}/patients/p1/appointments/{huge}", headers=_service()
        )
    attack(
        "5000-digit appointment id (gateway / scheduling)",
        "422 / 422",
        f"{via_gateway.status_code} / {direct.status_code}",
    )
    assert via_gateway.status_code == 422
    assert direct.status_code == 422


async def test_nul_characters_in_text_are_refused_not_a_500(stack: Stack, attack: Attack) -> None:
    token = await stack.linked_token("sec-nul")
    body = {"age": 40, "sex": "male", "text": "sore\u0000throat"}
    async with httpx.AsyncClient(timeout=30) as client:
        via_gateway = await client.post(
            f"{stack.gateway_url}/v1/me/triage/assess",
            json=body,
            headers={"Authorization": f"Bearer {token}"},
        )
        direct = await client.post(
            f"{stack.triage_url}/patients/p1/sessions",
            json=body,
            headers=service_headers("triage", caller="gateway"),
        )
    attack(
        "NUL character in symptom text (gateway / triage)",
        "422 / 422",
        f"{via_gateway.status_code} / {direct.status_code}",
    )
    assert via_gateway.status_code == 422
    assert direct.status_code == 422
    assert direct.headers["content-type"] == "application/problem+json"
