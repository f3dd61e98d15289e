"""Benchmark 1: a lab result reaches the patient.

The sandbox's clinician simulator results labs for the run's patients at a fixed rate; per
result, from the EHR's write of the report (its `meta.lastUpdated`, which the simulator's
201 lists: the sandbox runs on this machine, on the same clock) to (a) the `lab.resulted`
event on the broker, (b) the report listed in `GET /v1/me/lab-results` (sampled: one
result in `LIST_SAMPLE`, polled every `LIST_POLL_S` from the moment its event is on the
broker: records learns of a result only from that event, and polling earlier would only
load the machine being measured), (c) the notification on the patient's open SSE stream.
Lost and duplicated notifications are counted on the streams. Baseline: the same hops with
no logic (`baseline.Pipeline`: HTTP POST, two Kafka hops, SSE) at the same rate, timed
from its commit answering.

The clock once started when this process read the simulator's 201: under load it read it
late (the notification sometimes came first), which hid part of every latency instead of
measuring it; `answer_read_*` reports that lag.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections import Counter
from datetime import datetime
from typing import Any

import httpx

from .baseline import BaselineStream, Pipeline, tail_consumer
from .context import BOOTSTRAP, CONNECTOR, Context, histogram_totals
from .report import Progress, Result, latency_summary, ratio

PANELS = ("bmp", "cbc", "lipid", "a1c")
LIST_SAMPLE = 5
LIST_POLL_S = 0.02
# The consumer that times each event's arrival on the broker fetches with a short wait: on
# Tansu, which answers a fetch only when its wait expires, the instrument's own wait (500
# ms by default) was most of the measured 'EHR commit -> event' time.
MEASURING_FETCH_WAIT_MS = 10
DRAIN_S = 30.0
LAG_PROBE_S = 0.01
# The simulator's calls in flight at once (the sandbox writes one at a time anyway).
SIMULATOR_IN_FLIGHT = 8
# The connector's histogram of the EHR's share: event time at the EHR to notification received.
NOTIFY_DELAY = "inbound_notification_delay_seconds"


def _committed(written: list[dict[str, str]]) -> tuple[str, float] | None:
    """The report's id and when the EHR wrote it, on this process's monotonic clock (its
    `lastUpdated`: the sandbox runs on this machine, with the same wall clock)."""
    for entry in written:
        kind, _, fhir_id = entry["reference"].partition("/")
        if kind == "DiagnosticReport":
            wall = datetime.fromisoformat(entry["lastUpdated"].replace("Z", "+00:00")).timestamp()
            return fhir_id, time.monotonic() - (time.time() - wall)
    return None


async def _watch_events(
    consumer: Any, seen: dict[str, float], waiting: dict[str, asyncio.Event], stop: asyncio.Event
) -> None:
    """Record when each report's `lab.resulted` event appears on the broker (and wake the
    list poller waiting for it)."""
    try:
        while not stop.is_set():
            batches = await consumer.getmany(timeout_ms=100)
            now = time.monotonic()
            for messages in batches.values():
                for message in messages:
                    try:
                        body = json.loads(message.value)
                    except ValueError:
                        continue
                    data = body.get("data", body) if isinstance(body, dict) else {}
                    report = data.get("report_fhir_id") if isinstance(data, dict) else None
                    if report and report not in seen:
                        seen[report] = now
                        waiting.setdefault(report, asyncio.Event()).set()
    finally:
        await consumer.stop()


async def _loop_lag(samples: list[float], stop: asyncio.Event) -> None:
    """How late this process's event loop runs a 10 ms timer, ms: every time taken here
    (an event seen, a notification read) is late by about as much, since the load
    generator shares the two cores with the stack."""
    while not stop.is_set():
        asked = time.monotonic()
        await asyncio.sleep(LAG_PROBE_S)
        samples.append(max(0.0, time.monotonic() - asked - LAG_PROBE_S) * 1000)


async def _poll_list(
    patient: Any, report: str, on_broker: asyncio.Event, listed: dict[str, float]
) -> None:
    """Once the report's event is on the broker, poll the patient's newest lab results
    until the report shows (or DRAIN_S)."""
    deadline = time.monotonic() + DRAIN_S
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(on_broker.wait(), DRAIN_S)
    while time.monotonic() < deadline:
        try:
            response = await patient.http.get("/v1/me/lab-results", params={"limit": 5})
        except httpx.HTTPError:
            response = None
        if (
            response is not None
            and response.status_code == 200
            and any(item.get("id") == report for item in response.json().get("items", []))
        ):
            listed[report] = time.monotonic()
            return
        await asyncio.sleep(LIST_POLL_S)


async def _ours(ctx: Context, profile: bool = False) -> dict[str, Any]:
    settings = ctx.settings
    patients = await ctx.sign_in_patients(settings.patients)
    stop = asyncio.Event()
    events: dict[str, float] = {}
    on_broker: dict[str, asyncio.Event] = {}
    consumer = await tail_consumer(BOOTSTRAP, "lab.resulted", MEASURING_FETCH_WAIT_MS)
    watcher = asyncio.create_task(_watch_events(consumer, events, on_broker, stop))
    loop_lag: list[float] = []
    lag_probe = asyncio.create_task(_loop_lag(loop_lag, stop))
    acked: dict[str, tuple[float, Any]] = {}  # report -> (EHR write time, patient)
    answer_lag: list[float] = []  # EHR write -> its answer read here, ms
    listed: dict[str, float] = {}
    failures: Counter[str] = Counter()
    pollers: list[asyncio.Task[None]] = []
    rng = random.Random(16)
    busy: set[str] = set()
    tasks: list[asyncio.Task[None]] = []

    # Results the EHR is asked to write at once; the rest of what the rate asks for waits
    # here. Unbounded, they waited inside httpx's pool, whose every hand-out walks all its
    # waiting requests: at full size the load generator spent 0.9 of a core there (py-spy),
    # taken from the stack it measures, and could offer only half the rate.
    writing = asyncio.Semaphore(SIMULATOR_IN_FLIGHT)

    async def result_one(n: int) -> None:
        async with writing:
            # One patient's results come one after another (as a lab does): skip a busy one.
            patient = patients[n % len(patients)]
            if patient.id in busy:
                patient = next((p for p in patients if p.id not in busy), patient)
            busy.add(patient.id)
            try:
                written = await ctx.clinic.simulate_written(
                    "lab-result",
                    patient=patient.id,
                    panel=rng.choice(PANELS),
                    abnormal=n % 3 == 0,
                )
            except (AssertionError, httpx.HTTPError) as exc:
                failures[type(exc).__name__] += 1
                return
            finally:
                busy.discard(patient.id)
        answered = time.monotonic()
        committed = _committed(written)
        if committed is None:
            failures["no DiagnosticReport written"] += 1
            return
        report, at = committed
        # The clock starts at the EHR's write, not when this loaded process read its answer
        # (which the notification could beat: that lag was hidden, not measured).
        acked[report] = (at, patient)
        answer_lag.append((answered - at) * 1000)
        if n % LIST_SAMPLE == 0:
            seen = on_broker.setdefault(report, asyncio.Event())
            pollers.append(asyncio.create_task(_poll_list(patient, report, seen, listed)))

    progress = Progress("m1 lab results", settings.duration_s)
    cpu_before = ctx.cpu_seconds()
    # This process's own CPU: the load generator shares the two cores with the stack.
    own_before = time.process_time()
    notified_before = await histogram_totals(CONNECTOR, NOTIFY_DELAY)
    rss_idle = ctx.rss_mb()
    profiler = ctx.profiler if profile else None
    if profiler is not None:
        await profiler.start("m1", ctx.pids())
    start = time.monotonic()
    n = 0
    peak_rss: dict[str, float] = {}
    while time.monotonic() - start < settings.duration_s:
        tasks.append(asyncio.create_task(result_one(n)))
        n += 1
        progress.update(len(acked), "results acknowledged")
        if n % max(1, int(settings.lab_rate)) == 0:
            for name, mb in ctx.rss_mb().items():
                peak_rss[name] = max(peak_rss.get(name, 0.0), mb)
        next_at = start + n / settings.lab_rate
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))
    offered_s = time.monotonic() - start
    await asyncio.gather(*tasks)
    # Wait until every acknowledged result reached its stream (or DRAIN_S passed).
    deadline = time.monotonic() + DRAIN_S
    while time.monotonic() < deadline:
        delivered = _delivered(patients)
        if all(r in delivered for r in acked):
            break
        progress.update(len(delivered), "delivered (draining)")
        await asyncio.sleep(0.25)
    await asyncio.sleep(1.0)  # a duplicate shows shortly after the original
    await asyncio.gather(*pollers)
    stop.set()
    await watcher
    await lag_probe
    if profiler is not None:
        ctx.extra_results.append(await profiler.result("benchmark 1's load and drain"))
    cpu_after = ctx.cpu_seconds()
    own_cpu = time.process_time() - own_before
    notified_after = await histogram_totals(CONNECTOR, NOTIFY_DELAY)
    notified = notified_after[0] - notified_before[0]
    delivered_times = _delivered(patients)
    counts = _delivery_counts(patients)
    to_event = [(events[r] - t) * 1000 for r, (t, _p) in acked.items() if r in events]
    to_list = [(listed[r] - t) * 1000 for r, (t, _p) in acked.items() if r in listed]
    to_stream = [
        max(0.0, (delivered_times[r] - t) * 1000)
        for r, (t, _p) in acked.items()
        if r in delivered_times
    ]
    cpu = {k: round(cpu_after.get(k, 0.0) - cpu_before.get(k, 0.0), 2) for k in cpu_after}
    return {
        "acked": len(acked),
        "offered_rate": round(n / offered_s, 1),
        "written_rate": written_rate([t for t, _p in acked.values()], start),
        "failures": dict(failures),
        "event": to_event,
        "list": to_list,
        "stream": to_stream,
        "answer_lag": answer_lag,
        "loop_lag": loop_lag,
        "lost": sum(1 for r in acked if r not in delivered_times),
        "duplicated": sum(1 for r in acked if counts.get(r, 0) > 1),
        "cpu_s": cpu,
        "load_generator_cpu_s": round(own_cpu, 2),
        "notify_mean_ms": (
            round((notified_after[1] - notified_before[1]) * 1000 / notified, 1)
            if notified
            else None
        ),
        "rss_idle_mb": rss_idle,
        "rss_peak_mb": {k: round(v, 1) for k, v in peak_rss.items()},
    }


def written_rate(written_at: list[float], start: float) -> float | None:
    """Results per second the EHR actually wrote: from the first request to its last
    write. The generator asks for the configured rate, but at most `SIMULATOR_IN_FLIGHT`
    requests wait on the EHR at once, so a saturated EHR writes fewer (and the latencies,
    timed from each write, hold for this rate, not the asked one)."""
    if not written_at:
        return None
    span = max(written_at) - start
    return round(len(written_at) / span, 1) if span > 0 else None


async def live_flow(ctx: Context) -> dict[str, Any]:
    """One round of the flow (no baseline, no report): benchmark 5 runs it beside a
    back-fill. Its latencies are under "stream", "event" and "list"."""
    return await _ours(ctx)


def _delivered(patients: list[Any]) -> dict[str, float]:
    """First delivery time of each lab-result notification, over every stream."""
    first: dict[str, float] = {}
    for patient in patients:
        for d in patient.stream.delivered:
            if d.key[0] == "lab-result" and d.key[1] not in first:
                first[d.key[1]] = d.received
    return first


def _delivery_counts(patients: list[Any]) -> Counter[str]:
    counts: Counter[str] = Counter()
    for patient in patients:
        for d in patient.stream.delivered:
            if d.key[0] == "lab-result":
                counts[d.key[1]] += 1
    return counts


async def _baseline(ctx: Context, count_hint: int) -> dict[str, Any]:
    settings = ctx.settings
    pipeline = Pipeline(BOOTSTRAP, ctx.fetch_max_wait_ms)
    await pipeline.start()
    stream = BaselineStream(pipeline.url)
    await stream.start()
    acked: dict[str, float] = {}
    try:
        async with httpx.AsyncClient(base_url=pipeline.url, timeout=30) as client:

            async def one() -> None:
                response = await client.post("/commit", content=b"{}")
                item = response.json()["id"]
                acked[item] = pipeline.committed[item]  # from its commit, as ours

            progress = Progress("m1 baseline", settings.duration_s)
            tasks = []
            start = time.monotonic()
            n = 0
            while time.monotonic() - start < settings.duration_s:
                tasks.append(asyncio.create_task(one()))
                n += 1
                progress.update(len(acked), "commits")
                await asyncio.sleep(max(0.0, start + n / settings.lab_rate - time.monotonic()))
            await asyncio.gather(*tasks)
            deadline = time.monotonic() + DRAIN_S
            # The stream records arrivals in a dict: poll it until the drain deadline.
            while time.monotonic() < deadline and not all(a in stream.received for a in acked):  # noqa: ASYNC110
                await asyncio.sleep(0.1)
    finally:
        await stream.stop()
        await pipeline.stop()
    latencies = [
        max(0.0, (stream.received[a] - t) * 1000) for a, t in acked.items() if a in stream.received
    ]
    return {"acked": len(acked), "stream": latencies, "lost": len(acked) - len(latencies)}


async def run(ctx: Context) -> Result:
    """Benchmark 1 and its baseline; also benchmark 7's footprint figures."""
    started = time.monotonic()
    ours = await _ours(ctx, profile=True)
    base = await _baseline(ctx, ours["acked"])
    stream = latency_summary(ours["stream"])
    events = latency_summary(ours["event"])
    listed = latency_summary(ours["list"])
    lag = latency_summary(ours["answer_lag"])
    loop_lag = latency_summary(ours["loop_lag"])
    base_stream = latency_summary(base["stream"])
    acked = ours["acked"]
    cpu_total = sum(ours["cpu_s"].values())
    figures: dict[str, Any] = {
        "acknowledged": acked,
        "offered_rate_per_s": ours["offered_rate"],
        "written_rate_per_s": ours["written_rate"],
        "simulator_failures": sum(ours["failures"].values()),
        "lost": ours["lost"],
        "duplicated": ours["duplicated"],
        "ehr_notify_mean_ms": ours["notify_mean_ms"],
        "event_p50_ms": events["p50_ms"],
        "event_p99_ms": events["p99_ms"],
        "list_p50_ms": listed["p50_ms"],
        "list_p99_ms": listed["p99_ms"],
        "list_samples": listed["count"],
        "stream_p50_ms": stream["p50_ms"],
        "stream_p90_ms": stream["p90_ms"],
        "stream_p99_ms": stream["p99_ms"],
        "stream_max_ms": stream["max_ms"],
        "answer_read_p50_ms": lag["p50_ms"],
        "answer_read_p99_ms": lag["p99_ms"],
        "load_generator_loop_lag_p50_ms": loop_lag["p50_ms"],
        "load_generator_loop_lag_p99_ms": loop_lag["p99_ms"],
        "cpu_s_per_1000_events": round(cpu_total * 1000 / acked, 1) if acked else None,
    }
    baseline = {
        "acknowledged": base["acked"],
        "lost": base["lost"],
        "stream_p50_ms": base_stream["p50_ms"],
        "stream_p90_ms": base_stream["p90_ms"],
        "stream_p99_ms": base_stream["p99_ms"],
        "stream_max_ms": base_stream["max_ms"],
    }
    ratios = {
        k: ratio(figures[k], baseline[k])
        for k in ("stream_p50_ms", "stream_p90_ms", "stream_p99_ms", "stream_max_ms")
    }
    notes = [
        f"{ctx.settings.patients} patients with open streams; results asked of the EHR's "
        f"simulator at {ctx.settings.lab_rate:g}/s for {ctx.settings.duration_s:g} s "
        f"(offered_rate_per_s), at most {SIMULATOR_IN_FLIGHT} at once; written_rate_per_s: "
        "what the EHR wrote, from the first request to its last write (lower when the "
        "machine is saturated: the latencies hold for that rate).",
        "Latency from the EHR's write of the report (its meta.lastUpdated: same machine, "
        "same clock) to the event on the broker, the report in the list (one result in "
        f"{LIST_SAMPLE}, polled every {LIST_POLL_S * 1000:.0f} ms) and the SSE notification; "
        "the baseline's from its /commit answering. answer_read: the EHR's write to the "
        "load generator reading the simulator's 201 (how late a clock started there would be). "
        "load_generator_loop_lag: how late the load generator's event loop ran a 10 ms timer "
        "during the run; each time it took (event seen, list polled, notification read) is "
        "late by about as much.",
        "ehr_notify_mean_ms: the EHR's share, from each event's time at the EHR (its "
        "notification's timestamp) to the connector receiving the notification (the "
        "connector's inbound_notification_delay_seconds); the rest of the way is ours.",
    ]
    if ours["failures"]:
        notes.append(f"simulator failures: {ours['failures']}")
    result = Result(
        name="m1_lab_to_patient",
        title="1. Lab result to patient",
        config={
            "patients": ctx.settings.patients,
            "rate_per_s": ctx.settings.lab_rate,
            "duration_s": ctx.settings.duration_s,
        },
        figures=figures,
        baseline=baseline,
        ratios=ratios,
        samples={
            "ours: to SSE": ours["stream"],
            "ours: to event": ours["event"],
            "ours: to list": ours["list"],
            "baseline: to SSE": base["stream"],
        },
        notes=notes,
    )
    footprint = Result(
        name="m7_footprint",
        title="7. Footprint (idle, and under benchmark 1)",
        config={"under": "benchmark 1"},
        figures={
            **{f"rss_idle_mb.{k}": v for k, v in sorted(ours["rss_idle_mb"].items())},
            **{f"rss_load_mb.{k}": v for k, v in sorted(ours["rss_peak_mb"].items())},
            **{
                f"cpu_s_per_1000.{k}": round(v * 1000 / acked, 2) if acked else None
                for k, v in sorted(ours["cpu_s"].items())
            },
            "cpu_s_per_1000.total": figures["cpu_s_per_1000_events"],
            "cpu_s_per_1000.load_generator": (
                round(ours["load_generator_cpu_s"] * 1000 / acked, 2) if acked else None
            ),
        },
        baseline={},
        notes=[
            "RSS includes each process's children (PostgreSQL's backends map its shared "
            "buffers, so its sum counts them once per backend: an overcount); 'load' is the "
            "peak sampled once a second during benchmark 1; CPU is user+system over "
            "benchmark 1 (incl. its drain) per 1000 acknowledged lab results, PostgreSQL's "
            "with its backends (the services' queries and the EHR sandbox's); the total is "
            "the stack's, without the load generator (its streams, pollers and the "
            "simulator's calls) on the same cores."
        ],
    )
    result.elapsed_s = time.monotonic() - started
    ctx.extra_results.append(footprint)
    return result
