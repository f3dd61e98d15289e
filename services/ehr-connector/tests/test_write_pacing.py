"""How many requests the client has in flight: writes bounded, and after a 429 one at a
time for the kind of request the EHR refused (a refused write leaves reads concurrent)."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from ehr_connector.ehr.fhir_client import FhirClient
from ehr_connector.ehr.retry import RetryAfterGate
from ehr_connector.settings import Settings


class _InFlight:
    """Counts passages open at once, per kind; each stays open until `release` is set."""

    def __init__(self) -> None:
        self.now = {True: 0, False: 0}
        self.most = {True: 0, False: 0}
        self.release = asyncio.Event()

    async def through(self, gate: RetryAfterGate, *, write: bool) -> None:
        async with gate.passage("test", write=write):
            self.now[write] += 1
            self.most[write] = max(self.most[write], self.now[write])
            await self.release.wait()
            self.now[write] -= 1


async def _open_passages(gate: RetryAfterGate, writes: int, reads: int) -> _InFlight:
    seen = _InFlight()
    tasks = [
        *(asyncio.create_task(seen.through(gate, write=True)) for _ in range(writes)),
        *(asyncio.create_task(seen.through(gate, write=False)) for _ in range(reads)),
    ]
    # Let every task reach its passage (or the queue before it), then let them all finish.
    for _ in range(10):
        await asyncio.sleep(0)
    seen.release.set()
    await asyncio.gather(*tasks)
    return seen


async def test_before_any_429_every_request_goes_at_once() -> None:
    seen = await _open_passages(RetryAfterGate(serial_s=10, max_wait_s=5), writes=4, reads=4)
    assert seen.most == {True: 4, False: 4}


async def test_a_refused_write_makes_writes_go_one_at_a_time_and_leaves_reads_concurrent() -> None:
    gate = RetryAfterGate(serial_s=10, max_wait_s=5)
    gate.hold(0.0, write=True)
    seen = await _open_passages(gate, writes=4, reads=4)
    assert seen.most == {True: 1, False: 4}


async def test_a_refused_read_makes_every_request_go_one_at_a_time() -> None:
    gate = RetryAfterGate(serial_s=10, max_wait_s=5)
    gate.hold(0.0, write=False)
    seen = await _open_passages(gate, writes=4, reads=4)
    assert seen.most == {True: 1, False: 1}


async def test_a_refused_write_holds_reads_too_until_its_retry_after() -> None:
    """Which requests the EHR's limit covers is its business: nothing is sent early."""
    gate = RetryAfterGate(serial_s=10, max_wait_s=5)
    gate.hold(0.2, write=True)
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with gate.passage("read", write=False):
        waited = loop.time() - started
    assert waited >= 0.19


def _client(writes_at_once: int, seen: dict[str, int]) -> FhirClient:
    """A client whose EHR answers every request after a pause, counting those open."""
    release = {"POST": asyncio.Event(), "GET": asyncio.Event()}
    seen.update(now_POST=0, most_POST=0, now_GET=0, most_GET=0)

    async def answer(request: httpx.Request) -> httpx.Response:
        method = request.method
        seen[f"now_{method}"] += 1
        seen[f"most_{method}"] = max(seen[f"most_{method}"], seen[f"now_{method}"])
        if seen[f"now_{method}"] >= (writes_at_once if method == "POST" else 6):
            release[method].set()  # all that may be in flight are: let them all answer
        await release[method].wait()
        seen[f"now_{method}"] -= 1
        body: dict[str, Any] = {"resourceType": "Communication", "id": "c1"}
        body["meta"] = {"versionId": "1", "lastUpdated": "2026-12-06T03:00:00+00:00"}
        return httpx.Response(201 if method == "POST" else 200, json=body)

    settings = Settings(
        environment="test",
        ehr_base_url="http://ehr.test/fhir",
        ehr_auth_mode="none",
        ehr_writes_at_once=writes_at_once,
    )
    return FhirClient(settings, transport=httpx.MockTransport(answer))


async def test_writes_in_flight_are_bounded_and_reads_are_not() -> None:
    seen: dict[str, int] = {}
    fhir = _client(2, seen)
    try:
        resource = {"resourceType": "Communication", "status": "completed"}
        written = await asyncio.gather(*(fhir.create(dict(resource)) for _ in range(6)))
        assert [w.created for w in written] == [True] * 6
        assert seen["most_POST"] == 2
        read = await asyncio.gather(*(fhir.read("Communication", "c1") for _ in range(6)))
        assert len(read) == 6
        assert seen["most_GET"] == 6
    finally:
        await fhir.aclose()
