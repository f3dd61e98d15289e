"""Patient tokens are verified once and then remembered until they expire; the issuer's keys
are fetched once however many requests find them missing or stale at the same moment.

The issuer is a real HTTP server on a free port serving a JWKS the test controls; tokens
are ES256 JWTs signed with the test's own keys. The verifier's clock is the test's, so an
expiry is shown without waiting for it.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import ECKey

from gateway.auth import AuthError, TokenVerifier
from gateway.settings import Settings

ISSUER = "https://issuer.test"


@dataclass
class Issuer:
    """A JWKS endpoint serving the public halves of `keys`; `served` counts its answers."""

    url: str
    keys: list[ECKey] = field(default_factory=list)
    served: int = 0
    # While set, requests are read and never answered (a stopped issuer: the kernel still
    # accepts the connection); `asked` counts every request.
    hung: bool = False
    asked: int = 0

    def token(self, key: ECKey, *, exp: float, patient: str = "p-ann") -> str:
        claims = {
            "iss": ISSUER,
            "aud": "portal",
            "sub": patient,
            "patient": patient,
            "scope": "patient/Patient.r",
            "exp": int(exp),
            "iat": int(exp) - 900,
        }
        return jwt.encode({"alg": "ES256", "kid": key.kid, "typ": "at+jwt"}, claims, key)


def _key(kid: str) -> ECKey:
    return ECKey.generate_key("P-256", parameters={"kid": kid})


@pytest.fixture
async def issuer() -> AsyncIterator[Issuer]:
    state = Issuer(url="")

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while (await reader.readline()) not in (b"\r\n", b""):
            pass
        state.asked += 1
        if state.hung:
            await asyncio.Event().wait()  # cancelled when the server closes
        state.served += 1
        body = json.dumps({"keys": [k.as_dict(private=False) for k in state.keys]}).encode()
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
            + body
        )
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    state.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/jwks"
    try:
        yield state
    finally:
        server.close()
        await server.wait_closed()


def _verifier(
    issuer: Issuer, http: httpx.AsyncClient, clock: Any, **settings: Any
) -> TokenVerifier:
    return TokenVerifier(
        Settings(oidc_issuer=ISSUER, oidc_jwks_url=issuer.url, **settings), http, clock=clock
    )


async def test_a_remembered_token_is_refused_once_it_expires(issuer: Issuer) -> None:
    key = _key("k1")
    issuer.keys = [key]
    now = [time.time()]
    token = issuer.token(key, exp=now[0] + 60)
    async with httpx.AsyncClient() as http:
        verifier = _verifier(issuer, http, lambda: now[0])
        assert (await verifier.verify(token)).patient_fhir_id == "p-ann"
        assert (await verifier.verify(token)).patient_fhir_id == "p-ann"
        now[0] += 60 + 31  # past exp and its 30-s leeway
        with pytest.raises(AuthError) as refused:
            await verifier.verify(token)
    assert refused.value.status == 401


async def test_a_remembered_token_is_refused_once_its_key_is_withdrawn(issuer: Issuer) -> None:
    old, new = _key("old"), _key("new")
    issuer.keys = [old]
    token = issuer.token(old, exp=time.time() + 600)
    async with httpx.AsyncClient() as http:
        # Keys are fetched again on every verification here (stale at once, no cool-down).
        verifier = _verifier(issuer, http, time.time, jwks_refresh_s=0, jwks_min_refresh_s=0)
        assert (await verifier.verify(token)).subject == "p-ann"
        issuer.keys = [new]  # the issuer withdrew the key (compromised, rotated out)
        with pytest.raises(AuthError) as refused:
            await verifier.verify(token)
    assert refused.value.status == 401
    assert "signing key is not known" in refused.value.detail


async def test_requests_finding_no_keys_at_once_share_one_fetch(issuer: Issuer) -> None:
    key = _key("k1")
    issuer.keys = [key]
    tokens = [issuer.token(key, exp=time.time() + 600, patient=f"p-{n}") for n in range(20)]
    async with httpx.AsyncClient() as http:
        verifier = _verifier(issuer, http, time.time)
        verified = await asyncio.gather(*(verifier.verify(t) for t in tokens))
    assert [v.patient_fhir_id for v in verified] == [f"p-{n}" for n in range(20)]
    assert verifier.fetches == 1 and issuer.served == 1


async def test_a_hung_issuer_holds_requests_only_briefly_and_is_not_asked_again_at_once(
    issuer: Issuer,
) -> None:
    key = _key("k1")
    issuer.keys = [key]
    tokens = [issuer.token(key, exp=time.time() + 600, patient=f"p-{n}") for n in range(20)]
    async with httpx.AsyncClient(timeout=30) as http:
        verifier = _verifier(
            issuer,
            http,
            time.time,
            jwks_refresh_s=0.2,
            jwks_min_refresh_s=60,
            jwks_stale_wait_s=0.3,
        )
        assert (await verifier.verify(tokens[0])).patient_fhir_id == "p-0"
        issuer.hung = True
        await asyncio.sleep(0.25)  # the keys are stale now
        began = time.monotonic()
        first = await asyncio.gather(*(verifier.verify(t) for t in tokens))
        waited = time.monotonic() - began
        # The refresh is still hanging: later requests do not wait for it at all.
        began = time.monotonic()
        later = await asyncio.gather(*(verifier.verify(t) for t in tokens))
        later_waited = time.monotonic() - began
    assert [v.patient_fhir_id for v in first + later] == [f"p-{n}" for n in range(20)] * 2
    assert 0.25 <= waited < 2.0
    assert later_waited < 0.25
    assert issuer.asked == 2 and verifier.fetches == 2  # the first fetch and one refresh


async def test_a_failed_refresh_keeps_the_keys_and_is_retried_after_the_cool_down(
    issuer: Issuer,
) -> None:
    key = _key("k1")
    issuer.keys = [key]
    token = issuer.token(key, exp=time.time() + 600)
    async with httpx.AsyncClient(timeout=0.2) as http:
        verifier = _verifier(
            issuer, http, time.time, jwks_refresh_s=0.1, jwks_min_refresh_s=0.5, jwks_stale_wait_s=1
        )
        await verifier.verify(token)
        issuer.hung = True
        await asyncio.sleep(0.15)
        # The refresh times out (the client's 0.2 s) within the wait: the known keys serve.
        assert (await verifier.verify(token)).subject == "p-ann"
        for _ in range(5):
            assert (await verifier.verify(token)).subject == "p-ann"
        assert issuer.asked == 2  # no new attempt during the cool-down
        issuer.hung = False
        await asyncio.sleep(0.5)
        await verifier.verify(token)
        assert issuer.asked == 3 and issuer.served == 2
