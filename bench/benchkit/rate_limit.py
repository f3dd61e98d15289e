"""Benchmark 6: the EHR write rate under the EHR's rate limit.

The sandbox limits writes to `ALLOWED_PER_S` with 429 + Retry-After (its fault injection:
a token bucket over POST/PUT/PATCH/DELETE on /fhir) and keeps, per client, a ledger of
every write and whether it came before the Retry-After of a 429 it had been sent had
expired. So the figures are the EHR's, not the connector's word:

* ours: the connector is paused (SIGSTOP) while patients send `writes` messages through
  the gateway (each is one `Communication` to file), then resumed with the limit on: it
  drains the queue against the limit. Rate: writes passed after the first 429 (the bucket
  empty from then on, so the allowed rate is the refill rate) over the time to the last
  write; compliance: requests after a 429 that waited out its Retry-After. Every message
  is then looked up in the EHR: lost (none) and duplicated (more than one) filings.
* baseline: the physical limit of this machine for the same work: one bare client
  writing the same number of Communications one after another, waiting exactly each
  Retry-After, under the same limit.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from typing import Any

import httpx

from .acceptance import SANDBOX
from .context import Context
from .report import Progress, Result, ratio

ALLOWED_PER_S = 20.0
LIMIT = {
    "rate": ALLOWED_PER_S,
    "burst": ALLOWED_PER_S,
    "retry_after_s": 1,
    "writes_only": True,
}
SENDERS = 8  # patients' messages in flight at once while the queue is filled
NOT_CLIENTS = {"admin", "patient", "anonymous", "unknown"}
FHIR_JSON = {"Content-Type": "application/fhir+json"}


def _writes(ctx: Context) -> int:
    """Enough queued writes to keep the limit busy for the run's duration (plus the
    bucket's first burst, which passes at once)."""
    return int(ALLOWED_PER_S * ctx.settings.duration_s + LIMIT["burst"])


async def _set_limit(ctx: Context) -> None:
    response = await ctx.clinic.http.post("/sandbox/faults", json={"rate_limit": LIMIT})
    response.raise_for_status()


async def _ledgers(ctx: Context) -> dict[str, dict[str, Any]]:
    response = await ctx.clinic.http.get("/sandbox/faults")
    response.raise_for_status()
    clients: dict[str, dict[str, Any]] = response.json().get("rate_limit_clients", {})
    return clients


def _connector_ledger(ledgers: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The backend client's ledger (the connector is the only one writing)."""
    backends = [v for k, v in ledgers.items() if k not in NOT_CLIENTS]
    return max(backends, key=lambda v: int(v["requests"]), default={})


async def _fill_queue(ctx: Context, patients: list[Any], count: int, marker: str) -> int:
    """Send `count` messages through the gateway (the connector is paused: they queue)."""
    progress = Progress("m6 messages sent", count / 20)
    sent = 0
    failed: Counter[str] = Counter()
    queue: asyncio.Queue[int] = asyncio.Queue()
    for n in range(count):
        queue.put_nowait(n)

    async def send(n: int) -> str | None:
        """One message, again after a dropped connection or a 503 with the same
        Idempotency-Key (so it is sent once); None when sent, else why not."""
        patient = patients[n % len(patients)]
        body = {"subject": f"Benchmark question {n}", "body": f"{marker} {n}"}
        headers = {"Idempotency-Key": f"{marker}-{n}"}
        why = "no try"
        for attempt in range(3):
            try:
                response = await patient.http.post("/v1/me/threads", json=body, headers=headers)
            except httpx.HTTPError as exc:
                why = type(exc).__name__
            else:
                if response.status_code == 201:
                    return None
                why = str(response.status_code)
                if response.status_code != 503:
                    return why
            await asyncio.sleep(attempt + 1)
        return why

    async def sender() -> None:
        nonlocal sent
        while not queue.empty():
            why = await send(queue.get_nowait())
            if why is None:
                sent += 1
            else:
                failed[why] += 1
            progress.update(sent, "messages sent")

    await asyncio.gather(*(sender() for _ in range(SENDERS)))
    if failed:
        raise RuntimeError(f"messages refused while filling the queue: {dict(failed)}")
    return sent


async def _filed(ctx: Context, marker: str, since: str) -> Counter[str]:
    """How many Communications the EHR holds for each benchmark message."""
    found = await ctx.clinic.search("Communication", _lastUpdated=f"ge{since}", _count="500")
    counts: Counter[str] = Counter()
    for resource in found:
        for part in resource.get("payload", []):
            text = str(part.get("contentString", ""))
            if text.startswith(marker):
                counts[text] += 1
    return counts


async def _ours(ctx: Context) -> dict[str, Any]:
    settings = ctx.settings
    patients = await ctx.sign_in_patients(min(settings.patients, 20))
    writes = _writes(ctx)
    marker = f"bench6-{uuid.uuid4().hex[:8]}"
    since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 1))
    ctx.pause("ehr-connector", True)
    try:
        sent = await _fill_queue(ctx, patients, writes, marker)
        await _set_limit(ctx)  # a fresh ledger, the bucket full
    finally:
        ctx.pause("ehr-connector", False)
    resumed = time.monotonic()
    expected_s = sent / ALLOWED_PER_S
    deadline = resumed + expected_s * 3 + 60
    progress = Progress("m6 connector writes", expected_s)
    ledger: dict[str, Any] = {}
    while time.monotonic() < deadline:
        ledger = _connector_ledger(await _ledgers(ctx))
        passed = int(ledger.get("passed", 0))
        progress.update(passed, "writes passed the limit")
        if passed >= sent:
            break
        await asyncio.sleep(0.5)
    drain_s = time.monotonic() - resumed
    await ctx.clinic.http.delete("/sandbox/faults")
    counts = await _filed(ctx, marker, since)
    expected = {f"{marker} {n}" for n in range(sent)}
    return {
        "sent": sent,
        "ledger": ledger,
        "drain_s": drain_s,
        "lost": len(expected - set(counts)),
        "duplicated": sum(1 for k, v in counts.items() if k in expected and v > 1),
    }


async def _baseline(ctx: Context, writes: int, patient_fhir_id: str) -> dict[str, Any]:
    """One bare client, one write at a time, waiting exactly each Retry-After."""
    await _set_limit(ctx)
    progress = Progress("m6 baseline writes", writes / ALLOWED_PER_S)
    done = 0
    try:
        async with httpx.AsyncClient(
            base_url=SANDBOX, headers=dict(ctx.clinic.http.headers), timeout=30
        ) as client:
            while done < writes:
                resource = {
                    "resourceType": "Communication",
                    "status": "completed",
                    "subject": {"reference": f"Patient/{patient_fhir_id}"},
                    "payload": [{"contentString": f"baseline {done}"}],
                }
                response = await client.post(
                    "/fhir/Communication", json=resource, headers=FHIR_JSON
                )
                if response.status_code == 429:
                    await asyncio.sleep(float(response.headers.get("Retry-After", "1")))
                    continue
                response.raise_for_status()
                done += 1
                progress.update(done, "writes")
        ledger = (await _ledgers(ctx)).get("admin", {})
    finally:
        await ctx.clinic.http.delete("/sandbox/faults")
    return {"writes": done, "ledger": ledger}


def _rate(ledger: dict[str, Any]) -> float | None:
    value = ledger.get("rate_since_first_throttle_per_s")
    return float(value) if value is not None else None


async def run(ctx: Context) -> Result:
    """Benchmark 6 and its baseline."""
    started = time.monotonic()
    ours = await _ours(ctx)
    base = await _baseline(ctx, ours["sent"], ctx.patients[0].id)
    ledger, base_ledger = ours["ledger"], base["ledger"]
    rate, base_rate = _rate(ledger), _rate(base_ledger)
    figures: dict[str, Any] = {
        "writes_queued": ours["sent"],
        "writes_passed": ledger.get("passed"),
        "throttled_429": ledger.get("throttled"),
        "rate_per_s": rate,
        "rate_ratio": round(rate / ALLOWED_PER_S, 3) if rate is not None else None,
        "retry_after_compliance": ledger.get("retry_after_compliance"),
        "early_requests": ledger.get("early"),
        "in_flight_requests": ledger.get("in_flight"),
        "drain_s": round(ours["drain_s"], 1),
        "lost": ours["lost"],
        "duplicated": ours["duplicated"],
    }
    baseline: dict[str, Any] = {
        "writes_queued": base["writes"],
        "writes_passed": base_ledger.get("passed"),
        "throttled_429": base_ledger.get("throttled"),
        "rate_per_s": base_rate,
        "rate_ratio": round(base_rate / ALLOWED_PER_S, 3) if base_rate is not None else None,
        "retry_after_compliance": base_ledger.get("retry_after_compliance"),
        "early_requests": base_ledger.get("early"),
    }
    result = Result(
        name="m6_rate_limit",
        title="6. EHR write rate under a rate limit",
        config={
            "allowed_writes_per_s": ALLOWED_PER_S,
            "burst": LIMIT["burst"],
            "retry_after_s": LIMIT["retry_after_s"],
            "writes": ours["sent"],
        },
        figures=figures,
        baseline=baseline,
        ratios={"rate_per_s": ratio(rate, base_rate)},
        notes=[
            f"The sandbox limits writes to {ALLOWED_PER_S:g}/s (token bucket, burst "
            f"{LIMIT['burst']:g}, 429 with Retry-After: {LIMIT['retry_after_s']} s); the "
            "figures come from its per-client ledger, not from the connector.",
            "Ours: messages queued through the gateway with the connector paused, then "
            "drained by it against the limit. Rate: writes that passed after the first 429 "
            "over the time to the last one; compliance: share of requests after a 429 that "
            "came once its Retry-After had expired (requests already in flight when the "
            "429 was sent are shown apart).",
            "Baseline: a bare client writing the same number one at a time, waiting each "
            "Retry-After exactly.",
        ],
    )
    result.elapsed_s = time.monotonic() - started
    return result
