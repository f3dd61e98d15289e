"""Benchmark 4: the gateway under load.

`clients` concurrent patients (each with its own token and connection) read
`/v1/me/summary` and `/v1/me/lab-results` in a closed loop for the run's duration: latency
per request and requests per second. Then the same with the EHR sandbox down (its process
stopped with SIGSTOP: alive, answering nothing; the gateway reads the services' own data,
so this must not change the result). Then the same with one owning service slow:
messaging (the summary's threads) stopped for 1.5 s of every 1.6 s, so a call to it waits
up to 1.5 s; the summary leaves such a part out with a warning after
`SUMMARY_PART_TIMEOUT_S` (1 s), and the lab list does not call it at all. A summary with a
warning counts as `partial`. Baseline: the same clients on the same server's `/healthz` (no
database, no service behind it).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import httpx

from .acceptance import GATEWAY
from .context import Context
from .report import Progress, Result, latency_summary, ratio

PATHS = ("/v1/me/summary", "/v1/me/lab-results?limit=20")
LAB_PANELS = ("bmp", "cbc", "lipid", "a1c")
SIMULATOR_IN_FLIGHT = 8
SLOW_SERVICE = "messaging"
SLOW_STOPPED_S, SLOW_RUNNING_S = 1.5, 0.1
MAX_FAILURES_SHOWN = 5


async def _load(
    ctx: Context, paths: tuple[str, ...], label: str, authorised: bool = True
) -> dict[str, Any]:
    settings = ctx.settings
    patients = ctx.patients or await ctx.sign_in_patients(settings.patients)
    latencies: list[float] = []
    statuses: Counter[str] = Counter()
    partial = 0  # summaries answered with a part left out (a warning)
    failures: list[str] = []  # what each failed request met, for the report
    progress = Progress(label, settings.duration_s)
    # A client (one connection) per patient, as each patient's app has its own. One client
    # with a pool of 100 for all of them queued requests inside httpx for its next free
    # connection: 1% of requests waited 2-4 s there before being sent (httpx trace: no
    # bytes out until then; the gateway answered each of them in under 2 s), which made
    # the p99 5-6 s in every phase. The clients share one TLS context: each building its
    # own (loading the trust store) would cost the load generator seconds of CPU.
    tls = httpx.create_ssl_context()
    start = time.monotonic()
    stop_at = start + settings.duration_s

    async def client(n: int) -> None:
        nonlocal partial
        patient = patients[n % len(patients)]
        token = await patient.auth.token()  # signed in earlier: maybe near its expiry
        headers = {"Authorization": f"Bearer {token}"} if authorised else {}
        i = n
        async with httpx.AsyncClient(base_url=GATEWAY, timeout=30, verify=tls) as http:
            while time.monotonic() < stop_at:
                path = paths[i % len(paths)]
                i += 1
                sent = time.monotonic()
                try:
                    response = await http.get(path, headers=headers)
                    statuses[str(response.status_code)] += 1
                except httpx.HTTPError as exc:
                    statuses[type(exc).__name__] += 1
                    failures.append(_failure(exc, path, time.monotonic() - sent))
                    continue
                if path.endswith("/summary") and b'"warnings":[]' not in response.content:
                    partial += 1
                latencies.append((time.monotonic() - sent) * 1000)
                progress.update(len(latencies), "requests")

    await asyncio.gather(*(client(n) for n in range(settings.load_clients)))
    elapsed = time.monotonic() - start
    ok = statuses.get("200", 0)
    return {
        "latencies": latencies,
        "rps": round(len(latencies) / elapsed, 1),
        "ok_rps": round(ok / elapsed, 1),
        "statuses": dict(statuses),
        "errors": sum(v for k, v in statuses.items() if k != "200"),
        "partial": partial,
        "failures": failures[:MAX_FAILURES_SHOWN],
    }


def _failure(exc: BaseException, path: str, after_s: float) -> str:
    """`ReadError on /v1/me/summary after 0.003 s: ConnectionResetError(...)`: the error and
    its causes, and how long after sending it came (at once: a connection the server had
    closed; late: the server gave up)."""
    chain: list[str] = []
    cause: BaseException | None = exc
    while cause is not None and len(chain) < 4:
        chain.append(repr(cause)[:160])
        cause = cause.__cause__ or cause.__context__
    return f"{type(exc).__name__} on {path.split('?')[0]} after {after_s:.3f} s: " + " <- ".join(
        chain
    )


def history_size(settings: Any) -> int:
    """Lab reports each patient has when benchmark 4 reads: as many as benchmark 1 leaves
    them (its results over its patients), at least one."""
    return max(1, round(settings.duration_s * settings.lab_rate / settings.patients))


async def _lab_reports(patient: Any, limit: int) -> int:
    response = await patient.http.get("/v1/me/lab-results", params={"limit": limit})
    if response.status_code != 200:
        return 0
    items = response.json().get("items", [])
    return len(items) if isinstance(items, list) else 0


async def ensure_lab_history(ctx: Context, patients: list[Any], per_patient: int) -> list[int]:
    """Give every patient at least `per_patient` lab reports in the portal (results the
    EHR's simulator files, as benchmark 1 does) and wait until they are listed; returns
    each patient's count. Run alone, benchmark 4 read empty charts: 245 requests/s where
    the same code read benchmark 1's charts at 90-108."""
    writing = asyncio.Semaphore(SIMULATOR_IN_FLIGHT)

    async def top_up(patient: Any) -> None:
        missing = per_patient - await _lab_reports(patient, per_patient)
        for k in range(max(0, missing)):
            async with writing:
                await ctx.clinic.simulate(
                    "lab-result", patient=patient.id, panel=LAB_PANELS[k % len(LAB_PANELS)]
                )

    await asyncio.gather(*(top_up(p) for p in patients))
    deadline = time.monotonic() + ctx.settings.drain_limit_s
    counts = [await _lab_reports(p, per_patient) for p in patients]
    while min(counts, default=per_patient) < per_patient and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
        counts = [await _lab_reports(p, per_patient) for p in patients]
    return counts


async def run(ctx: Context) -> Result:
    """Baseline, the reads, the reads with the EHR down, the reads with a service slow."""
    started = time.monotonic()
    readers = ctx.patients or await ctx.sign_in_patients(ctx.settings.patients)
    charts = await ensure_lab_history(
        ctx, readers[: ctx.settings.load_clients], history_size(ctx.settings)
    )
    base = await _load(ctx, ("/healthz",), "m4 baseline /healthz", authorised=False)
    if ctx.profiler is not None:
        await ctx.profiler.start("m4", ctx.pids())
    ours = await _load(ctx, PATHS, "m4 summary + lab list")
    if ctx.profiler is not None:
        ctx.extra_results.append(await ctx.profiler.result("benchmark 4's first phase"))
    # The sandbox issues the patients' tokens: renewed now to outlive the phase, since a
    # renewal while it is stopped cannot be answered (the gateway checks tokens itself).
    patients = ctx.patients or await ctx.sign_in_patients(ctx.settings.patients)
    for patient in patients:
        await patient.auth.token(valid_for_s=ctx.settings.duration_s + 60)
    ctx.pause("ehr-sandbox", True)
    try:
        down = await _load(ctx, PATHS, "m4 with the EHR down")
    finally:
        ctx.pause("ehr-sandbox", False)
    async with ctx.slowed(SLOW_SERVICE, SLOW_STOPPED_S, SLOW_RUNNING_S):
        slow = await _load(ctx, PATHS, f"m4 with {SLOW_SERVICE} slow")
    s_slow = latency_summary(slow["latencies"])
    s_ours = latency_summary(ours["latencies"])
    s_down = latency_summary(down["latencies"])
    s_base = latency_summary(base["latencies"])
    figures: dict[str, Any] = {
        "rps": ours["rps"],
        "p50_ms": s_ours["p50_ms"],
        "p99_ms": s_ours["p99_ms"],
        "max_ms": s_ours["max_ms"],
        "errors": ours["errors"],
        "ehr_down_rps": down["rps"],
        "ehr_down_p50_ms": s_down["p50_ms"],
        "ehr_down_p99_ms": s_down["p99_ms"],
        "ehr_down_errors": down["errors"],
        "slow_service_rps": slow["rps"],
        "slow_service_p50_ms": s_slow["p50_ms"],
        "slow_service_p99_ms": s_slow["p99_ms"],
        "slow_service_errors": slow["errors"],
        "slow_service_partial": slow["partial"],
        "partial": ours["partial"],
        "lab_reports_per_patient_min": min(charts, default=0),
    }
    baseline = {
        "rps": base["rps"],
        "p50_ms": s_base["p50_ms"],
        "p99_ms": s_base["p99_ms"],
        "max_ms": s_base["max_ms"],
        "errors": base["errors"],
        "ehr_down_rps": base["rps"],
        "ehr_down_p50_ms": s_base["p50_ms"],
        "ehr_down_p99_ms": s_base["p99_ms"],
        "slow_service_rps": base["rps"],
        "slow_service_p50_ms": s_base["p50_ms"],
        "slow_service_p99_ms": s_base["p99_ms"],
    }
    ratios = {
        k: ratio(figures[k], baseline[k])
        for k in (
            "rps",
            "p50_ms",
            "p99_ms",
            "max_ms",
            "ehr_down_rps",
            "ehr_down_p50_ms",
            "ehr_down_p99_ms",
            "slow_service_rps",
            "slow_service_p50_ms",
            "slow_service_p99_ms",
        )
    }
    result = Result(
        name="m4_gateway_load",
        title="4. Gateway under load",
        config={
            "clients": ctx.settings.load_clients,
            "duration_s_per_phase": ctx.settings.duration_s,
            "paths": " + ".join(PATHS),
        },
        figures=figures,
        baseline=baseline,
        ratios=ratios,
        samples={
            "summary + lab list": ours["latencies"],
            "same, EHR down": down["latencies"],
            f"same, {SLOW_SERVICE} slow": slow["latencies"],
            "baseline /healthz": base["latencies"],
        },
        notes=[
            f"statuses: ours {ours['statuses']}, EHR down {down['statuses']}, "
            f"{SLOW_SERVICE} slow {slow['statuses']}, baseline {base['statuses']}",
            f"{SLOW_SERVICE} slow: stopped {SLOW_STOPPED_S} s of every "
            f"{SLOW_STOPPED_S + SLOW_RUNNING_S} s; summaries with a part left out: "
            f"{slow['partial']} (without the slow service: {ours['partial']})",
            "Closed loop: each client sends its next request when the previous one answered, "
            "so rps is what the gateway sustained with that many patients at once.",
            f"Each patient's chart holds at least {history_size(ctx.settings)} lab reports "
            "(as benchmark 1 leaves them; filed first when benchmark 4 runs alone).",
            *(
                f"failed ({phase}): {failure}"
                for phase, run in (
                    ("ours", ours),
                    ("EHR down", down),
                    (f"{SLOW_SERVICE} slow", slow),
                    ("baseline", base),
                )
                for failure in run["failures"]
            ),
        ],
    )
    result.elapsed_s = time.monotonic() - started
    return result
