"""Run the benchmarks on the stack as `make up` starts it and write the report.

    python bench/run.py [--quick] [--kafka tansu|apache] [--only m1,m4] [--profile] [--traces]

Starts the stack in a temporary data directory (embedded PostgreSQL, the broker, the EHR
sandbox, the six services on their fixed ports: run it where those ports are free), runs
each benchmark with its same-run baseline, writes `bench/results/<name>.json`, a latency
plot per latency benchmark, appends the run's tables to `bench/results/REPORT.md`, stops
the stack, and prints ONE JSON line of headline figures last on stdout. Progress goes to
stderr. Exits 1 when a benchmark failed to run (figures are never judged here).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchkit import (
    backfill,
    booking,
    consumer_throughput,
    gateway_load,
    lab_to_patient,
    outbox_relay,
    rate_limit,
)
from benchkit.acceptance import Clinic, LocalStack, StackFailed
from benchkit.context import Context, Settings
from benchkit.profile import Profiler
from benchkit.report import (
    Result,
    headline,
    machine_info,
    plot,
    utc_now,
    write_results,
)
from benchkit.traces import write_slowest

RESULTS = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parents[1]

BENCHMARKS: dict[str, Callable[[Context], Awaitable[Result]]] = {
    "m1": lab_to_patient.run,
    "m4": gateway_load.run,
    "m2": booking.run,
    "m3": consumer_throughput.run,
    "m5": backfill.run,
    "m6": rate_limit.run,
    "relay": outbox_relay.run,
}

# The final JSON line: name -> (benchmark result name, section, figure).
HEADLINE = {
    "m1_p50_ms": ("m1_lab_to_patient", "figures", "stream_p50_ms"),
    "m1_p99_ms": ("m1_lab_to_patient", "figures", "stream_p99_ms"),
    "m1_lost": ("m1_lab_to_patient", "figures", "lost"),
    "m1_duplicated": ("m1_lab_to_patient", "figures", "duplicated"),
    "m1_written_rate_per_s": ("m1_lab_to_patient", "figures", "written_rate_per_s"),
    "m1_p99_ratio": ("m1_lab_to_patient", "ratios", "stream_p99_ms"),
    "m1_event_p99_ms": ("m1_lab_to_patient", "figures", "event_p99_ms"),
    "m1_list_p99_ms": ("m1_lab_to_patient", "figures", "list_p99_ms"),
    "m2_p99_ms": ("m2_booking", "figures", "to_ehr_p99_ms"),
    "m2_confirm_p99_ms": ("m2_booking", "figures", "to_patient_p99_ms"),
    "m2_double_bookings": ("m2_booking", "figures", "double_bookings"),
    "m3_events_per_s": ("m3_consumer_throughput", "figures", "events_per_s"),
    "m3_ratio": ("m3_consumer_throughput", "ratios", "events_per_s"),
    "m4_p99_ms": ("m4_gateway_load", "figures", "p99_ms"),
    "m4_rps": ("m4_gateway_load", "figures", "rps"),
    "m4_rps_ratio": ("m4_gateway_load", "ratios", "rps"),
    "m4_ehr_down_p99_ms": ("m4_gateway_load", "figures", "ehr_down_p99_ms"),
    "m4_slow_service_p99_ms": ("m4_gateway_load", "figures", "slow_service_p99_ms"),
    "m5_visible_s": ("m5_backfill", "figures", "visible_s"),
    "m5_live_p99_ms": ("m5_backfill", "figures", "live_p99_ms"),
    "m5_live_p99_ratio": ("m5_backfill", "ratios", "live_p99_ms"),
    "m5_live_written_rate_per_s": ("m5_backfill", "figures", "live_written_rate_per_s"),
    "m6_rate_ratio": ("m6_rate_limit", "figures", "rate_ratio"),
    "m6_retry_after_compliance": ("m6_rate_limit", "figures", "retry_after_compliance_all"),
    "m6_tight_rate_ratio": ("m6_rate_limit", "figures", "tight_rate_ratio"),
    "m6_lost": ("m6_rate_limit", "figures", "lost"),
    "relay_ratio": ("relay_outbox", "ratios", "publish_per_s"),
    "m7_cpu_s_per_1000_events": ("m7_footprint", "figures", "cpu_s_per_1000.total"),
}


def _log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


async def _run(ctx: Context, names: list[str]) -> tuple[list[Result], list[str]]:
    results: list[Result] = []
    failed: list[str] = []
    for name in names:
        _log(f"==> benchmark {name}")
        began = time.monotonic()
        began_at = datetime.now(UTC)
        try:
            result = await BENCHMARKS[name](ctx)
        # aiokafka can raise CancelledError out of a client's stop(): one benchmark's
        # failure, not the run's; a cancelled run (Ctrl-C) still ends.
        except (Exception, asyncio.CancelledError):
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # Ctrl-C (asyncio.run cancels the main task): stop the run
            failed.append(name)
            _log(f"benchmark {name} failed:\n{traceback.format_exc()}")
            continue
        results.append(result)
        _log(f"    {name} done in {time.monotonic() - began:.0f} s: {result.figures}")
        if ctx.traces_dir is not None:
            written = await write_slowest(REPO, name, began_at, datetime.now(UTC), ctx.traces_dir)
            if written is not None:
                _log(f"    slowest traces: {written}")
    results += ctx.extra_results
    return results, failed


async def _with_stack(
    stack: Any,
    settings: Settings,
    kafka: str,
    names: list[str],
    profile_dir: Path | None,
    traces_dir: Path | None,
) -> Any:
    async with Clinic() as clinic:
        await clinic.wait_subscriptions_active()
        ctx = Context(stack=stack, clinic=clinic, settings=settings, kafka=kafka)
        if profile_dir is not None:
            ctx.profiler = Profiler(profile_dir)
        ctx.traces_dir = traces_dir
        try:
            return await _run(ctx, names)
        finally:
            await ctx.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="10-second version of each")
    parser.add_argument("--kafka", default=os.environ.get("KAFKA", "tansu"))
    parser.add_argument("--only", default="", help="comma-separated: " + ",".join(BENCHMARKS))
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument(
        "--traces",
        action="store_true",
        help="run the trace sink too; the slowest traces of benchmarks 1, 2 and 4 to "
        "<results>/traces/<benchmark>.txt (spans cost time: not figures to compare)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="benchmarks 1 to 6 under py-spy: report sections, <results>/profile/m*/*.txt",
    )
    args = parser.parse_args(argv)
    names = [n for n in args.only.split(",") if n] or list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmarks: {unknown}")
    settings = Settings.make(args.quick)
    machine = machine_info()
    run_info = {
        "started": utc_now(),
        "mode": "quick" if args.quick else "full",
        "kafka": args.kafka,
        "settings": settings.as_dict(),
        "traced": args.traces,
    }
    data_dir = Path(tempfile.mkdtemp(prefix="portal-bench-"))
    # Bookers cycle book/cancel far faster than a patient would: the per-patient write
    # limit (a policy, tested in tests/security) would turn the benchmark into its own.
    os.environ.setdefault("RATE_LIMIT_PATIENT_WRITES_PER_MIN", "0")
    # Benchmark 6 queues hundreds of messages from a few patients: messaging's per-patient
    # limit (10 per 5 minutes, tested in services/messaging) would refuse all but a few.
    os.environ.setdefault("RATE_LIMIT_MESSAGES", "1000000")
    # Benchmark 4's hundred patients all come from this machine's one address: the per-IP
    # limit (50/s, burst 500; its own tests in services/gateway) answered a sixth of the
    # full run's reads with 429 once the burst was spent. The per-token limit stays on.
    os.environ.setdefault("RATE_LIMIT_IP_PER_S", "0")
    stack = LocalStack(data_dir, kafka=args.kafka, tracing=args.traces)
    _log(f"starting the stack ({args.kafka}) in {data_dir}")
    began = time.monotonic()
    try:
        try:
            stack.start()
        except StackFailed as exc:
            _log(f"the stack did not start: {exc}")
            return 1
        _log(f"stack ready in {time.monotonic() - began:.0f} s")
        profile_dir = args.results / "profile" if args.profile else None
        traces_dir = args.results / "traces" if args.traces else None
        results, failed = asyncio.run(
            _with_stack(stack, settings, args.kafka, names, profile_dir, traces_dir)
        )
    finally:
        stack.stop()
        if os.environ.get("BENCH_KEEP_LOGS"):
            shutil.copy(stack.log_path, os.environ["BENCH_KEEP_LOGS"])
        shutil.rmtree(data_dir, ignore_errors=True)
    run_info["elapsed_s"] = round(time.monotonic() - began, 1)
    for path in write_results(results, args.results, machine, run_info):
        _log(f"wrote {path}")
    for result in results:
        picture = plot(result, args.results / f"{result.name}.png")
        if picture is not None:
            _log(f"wrote {picture}")
    line = headline(results, HEADLINE)
    line.update({"kafka": args.kafka, "mode": run_info["mode"], "failed": failed})
    print(json.dumps(line), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
