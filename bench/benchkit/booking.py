"""Benchmark 2: booking reaches the EHR.

`bookers` patients at once each book a free slot, wait for the confirmation, cancel it,
wait for the cancellation, and book another slot, in cycles for the run's duration. Per
booking: the time from the `POST /v1/me/appointments` to the Appointment's creation in the
EHR (its first version's `meta.lastUpdated`, the EHR's commit time: same machine, same
clock; read from the EHR once the run is over) and to the `booked` notification on the
patient's open SSE stream. At the end every slot used is checked in the EHR for more than
one booked Appointment (a double booking).
Baseline: the same hops with no logic (`baseline.Pipeline` with an HTTP sink: POST, two
Kafka hops, POST to the "EHR").
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from .baseline import Pipeline
from .context import BOOTSTRAP, Context
from .report import Progress, Result, latency_summary, ratio

CONFIRM_TIMEOUT_S = 60.0


async def _notified(patient: Any, appointment_id: str, status: str, since: float) -> float | None:
    """When the patient's stream said `appointment_id` is `status` (None: not in time)."""
    deadline = time.monotonic() + CONFIRM_TIMEOUT_S
    while time.monotonic() < deadline:
        for d in patient.stream.delivered:
            if d.key == ("appointment", appointment_id, status) and d.received >= since - 0.5:
                return float(d.received)
        await asyncio.sleep(0.01)
    return None


async def _creation_times(clinic: Any, patient_fhir_id: str) -> dict[str, float]:
    """Wall-clock time the EHR created each of a patient's Appointments, by the slot it
    was booked on (the first version's `meta.lastUpdated`: the EHR's commit time)."""
    created: dict[str, float] = {}
    for appointment in await clinic.search("Appointment", patient=patient_fhir_id):
        first = await clinic.http.get(f"/fhir/Appointment/{appointment['id']}/_history/1")
        updated = (first.json() if first.status_code == 200 else appointment).get("meta", {})
        if not updated.get("lastUpdated"):
            continue
        at = datetime.fromisoformat(updated["lastUpdated"]).timestamp()
        for s in appointment.get("slot", []):
            slot = str(s.get("reference", "")).removeprefix("Slot/")
            created[slot] = min(at, created.get(slot, at))
    return created


async def _to_ehr(clinic: Any, sent: list[tuple[str, str, float]]) -> tuple[list[float], int]:
    """Per booking `(patient FHIR id, slot, POST wall time)`, the time to its Appointment's
    creation in the EHR, in booking order, and how many have none. Looked up after the run:
    during it, a search per booking (each patient's list growing with every cycle) was load
    on the EHR the bookings themselves wait for."""
    created = {p: await _creation_times(clinic, p) for p in dict.fromkeys(p for p, _, _ in sent)}
    times = [max(0.0, (created[p][slot] - at) * 1000) for p, slot, at in sent if slot in created[p]]
    return times, len(sent) - len(times)


async def _free_slots(patient: Any, start: str, wanted: int) -> list[str]:
    """Ids of up to `wanted` free slots from `start`, page by page (`{"items": [...],
    "next_cursor": ...}`; a plain list from gateways before paging)."""
    ids: list[str] = []
    cursor: str | None = None
    while len(ids) < wanted:
        params: dict[str, Any] = {"start": start, "limit": 200}
        if cursor:
            params["cursor"] = cursor
        page = await patient.get("/v1/slots", **params)
        items = page if isinstance(page, list) else page.get("items", [])
        ids += [str(s["id"]) for s in items]
        cursor = None if isinstance(page, list) else page.get("next_cursor")
        if not cursor:
            break
    return ids


async def _ours(ctx: Context) -> dict[str, Any]:
    settings = ctx.settings
    patients = ctx.patients[: settings.bookers] or await ctx.sign_in_patients(settings.bookers)
    start = (datetime.now(UTC) + timedelta(days=2)).isoformat()
    # A booking cycle takes well over a second, so one free slot per booker per second of
    # the run is more than the run can use: the full run (60 s) books ~200 and needs more
    # than the quick run's 200 (it ran out once, 20 "no free slot left").
    slots = await _free_slots(
        patients[0], start, wanted=max(200, int(settings.bookers * settings.duration_s))
    )
    booked: list[tuple[str, str, float]] = []
    to_patient: list[float] = []
    problems: Counter[str] = Counter()
    used: list[tuple[Any, str]] = []
    stop_at = time.monotonic() + settings.duration_s
    progress = Progress("m2 bookings", settings.duration_s)

    async def book(patient: Any) -> str | None:
        if not slots:
            problems["no free slot left"] += 1
            return None
        slot = slots.pop(0)
        sent_wall = time.time()
        sent = time.monotonic()
        response = await patient.http.post("/v1/me/appointments", json={"slot_id": slot})
        if response.status_code != 201:
            problems[f"book {response.status_code}"] += 1
            return None
        appointment_id = str(response.json()["id"])
        used.append((patient, slot))
        confirmed = await _notified(patient, appointment_id, "booked", sent)
        if confirmed is None:
            problems["not confirmed in time"] += 1
            return None
        to_patient.append((confirmed - sent) * 1000)
        booked.append((patient.id, slot, sent_wall))
        progress.update(len(to_patient), "bookings confirmed")
        return appointment_id

    async def cycle(patient: Any) -> None:
        while time.monotonic() < stop_at:
            appointment_id = await book(patient)
            if appointment_id is None:
                return
            sent = time.monotonic()
            response = await patient.http.post(
                f"/v1/me/appointments/{appointment_id}/cancel", json={}
            )
            if response.status_code != 200:
                problems[f"cancel {response.status_code}"] += 1
                return
            if await _notified(patient, appointment_id, "cancelled", sent) is None:
                problems["cancellation not notified in time"] += 1
                return
            # ...and rebook (another slot) on the next turn of the loop.

    try:
        await asyncio.gather(*(cycle(p) for p in patients))
    except httpx.HTTPError as exc:
        problems[type(exc).__name__] += 1
    doubles = await _double_bookings(ctx, used)
    to_ehr, missing = await _to_ehr(ctx.clinic, booked)
    if missing:
        problems["no Appointment in the EHR"] += missing
    return {
        "to_ehr": to_ehr,
        "to_patient": to_patient,
        "problems": dict(problems),
        "double_bookings": doubles,
        "bookings": len(to_patient),
    }


async def _double_bookings(ctx: Context, used: list[tuple[Any, str]]) -> int:
    """Slots with more than one booked Appointment in the EHR."""
    booked: Counter[str] = Counter()
    slots = {slot for _p, slot in used}
    for patient_id in {p.id for p, _s in used}:
        for appointment in await ctx.clinic.search("Appointment", patient=patient_id):
            if appointment.get("status") != "booked":
                continue
            for s in appointment.get("slot", []):
                slot = str(s.get("reference", "")).removeprefix("Slot/")
                if slot in slots:
                    booked[slot] += 1
    return sum(1 for count in booked.values() if count > 1)


async def _baseline(ctx: Context, count: int) -> list[float]:
    pipeline = Pipeline(BOOTSTRAP, ctx.fetch_max_wait_ms)
    pipeline.sink_mode = "ehr"
    await pipeline.start()
    sent: dict[str, float] = {}
    try:
        async with httpx.AsyncClient(base_url=pipeline.url, timeout=30) as client:
            concurrency = asyncio.Semaphore(ctx.settings.bookers)

            async def one() -> None:
                async with concurrency:
                    began = time.monotonic()
                    response = await client.post("/commit", content=b"{}")
                    item = response.json()["id"]
                    sent[item] = began
                    deadline = time.monotonic() + CONFIRM_TIMEOUT_S
                    # The sink records arrivals in a dict: poll it (10 ms) until the deadline.
                    while item not in pipeline.ehr_writes and time.monotonic() < deadline:  # noqa: ASYNC110
                        await asyncio.sleep(0.005)

            await asyncio.gather(*(one() for _ in range(max(count, ctx.settings.bookers))))
    finally:
        await pipeline.stop()
    return [
        (pipeline.ehr_writes[i] - t) * 1000 for i, t in sent.items() if i in pipeline.ehr_writes
    ]


async def run(ctx: Context) -> Result:
    """Benchmark 2 and its baseline."""
    started = time.monotonic()
    if ctx.profiler is not None:
        await ctx.profiler.start("m2", ctx.pids())
    ours = await _ours(ctx)
    if ctx.profiler is not None:
        ctx.extra_results.append(await ctx.profiler.result("benchmark 2's bookings"))
    base = await _baseline(ctx, ours["bookings"])
    s_ehr = latency_summary(ours["to_ehr"])
    s_patient = latency_summary(ours["to_patient"])
    s_base = latency_summary(base)
    figures: dict[str, Any] = {
        "bookings": ours["bookings"],
        "double_bookings": ours["double_bookings"],
        "problems": sum(ours["problems"].values()),
        "to_ehr_p50_ms": s_ehr["p50_ms"],
        "to_ehr_p99_ms": s_ehr["p99_ms"],
        "to_patient_p50_ms": s_patient["p50_ms"],
        "to_patient_p99_ms": s_patient["p99_ms"],
    }
    baseline = {
        "bookings": s_base["count"],
        "to_ehr_p50_ms": s_base["p50_ms"],
        "to_ehr_p99_ms": s_base["p99_ms"],
    }
    ratios = {k: ratio(figures[k], baseline[k]) for k in ("to_ehr_p50_ms", "to_ehr_p99_ms")}
    notes = [
        f"{ctx.settings.bookers} patients at once: book, confirmation, cancel, cancellation, "
        "rebook another slot, until the duration ends.",
        "To EHR: POST sent to the Appointment's first version in the EHR (meta.lastUpdated, "
        "millisecond clock of the same machine). To patient: POST sent to the `booked` "
        "notification on the patient's stream.",
    ]
    if ours["problems"]:
        notes.append(f"problems: {ours['problems']}")
    result = Result(
        name="m2_booking",
        title="2. Booking to EHR",
        config={"bookers": ctx.settings.bookers, "duration_s": ctx.settings.duration_s},
        figures=figures,
        baseline=baseline,
        ratios=ratios,
        samples={
            "ours: to EHR": ours["to_ehr"],
            "ours: to patient": ours["to_patient"],
            "baseline: to EHR": base,
        },
        notes=notes,
    )
    result.elapsed_s = time.monotonic() - started
    return result
