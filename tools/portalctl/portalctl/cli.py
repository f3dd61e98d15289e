"""`portalctl`: the on-call tasks of the portal, one command each.

    portalctl dead-letters list [--service NAME] [--status open]   across every service
    portalctl dead-letters show SERVICE ID
    portalctl dead-letters redrive SERVICE ID | discard SERVICE ID
    portalctl outbox status [SERVICE]
    portalctl outbox replay SERVICE --since 2026-12-03T08:00:00+00:00 [--topic lab.resulted]
    portalctl subscriptions status | ensure | recover SUBSCRIPTION_ID
    portalctl backfill start PATIENT_ID [--fhir-id ID] | status PATIENT_ID
    portalctl audit verify
    portalctl audit export [--patient ID] [--since TIME] [--until TIME] [--limit N]
    portalctl canary run

Tables by default, `--json` for scripts. Exit codes: 0 done; 1 the check failed (broken
audit chain, canary timed out, a service unreachable); 2 refused (bad arguments, 4xx).
Environment: PORTAL_OPS_TOKEN (the ops token), PORTALCTL_<SERVICE>_URL (default: the local
ports, e.g. PORTALCTL_EHR_CONNECTOR_URL=http://127.0.0.1:8005).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any, TextIO

import httpx

from portalctl.client import SERVICES, Ops, OpsError, ops_token
from portalctl.render import table, vertical

CONNECTOR = "ehr-connector"
Command = Callable[[Ops, argparse.Namespace], Awaitable["Result"]]


class Result:
    """What a command shows (rows or one record) and its exit code."""

    def __init__(
        self,
        data: Any,
        *,
        columns: Sequence[str] = (),
        code: int = 0,
        note: str = "",
        single: bool = False,
        document: bool = False,
    ) -> None:
        self.data, self.columns, self.code, self.note, self.single = (
            data,
            columns,
            code,
            note,
            single,
        )
        # A document (a FHIR Bundle) is printed as it is, whatever --json says.
        self.document = document

    def write(self, out: TextIO, as_json: bool) -> None:
        """Print as JSON or as a table (a single record vertically)."""
        if as_json or self.document:
            out.write(json.dumps(self.data, indent=2, default=str) + "\n")
            return
        if self.single:
            out.write(vertical(self.data) + "\n")
        else:
            out.write(table(self.data, self.columns) + "\n")
        if self.note:
            out.write(self.note + "\n")


# -- dead letters --------------------------------------------------------------------------------

DEAD_LETTER_COLUMNS = (
    "service",
    "id",
    "consumer",
    "topic",
    "status",
    "attempts",
    "error_kind",
    "parked_behind",
    "created_at",
    "error",
)


async def dead_letters_list(ops: Ops, args: argparse.Namespace) -> Result:
    """Dead letters of every service (or one), newest first; unreachable ones noted."""
    services = [args.service] if args.service else list(SERVICES)
    params = {"status": args.status, "limit": args.limit}
    answers = await asyncio.gather(
        *(ops.call(s, "GET", "/ops/dead-letters", params=params) for s in services),
        return_exceptions=True,
    )
    rows: list[dict[str, Any]] = []
    failures: list[str] = []
    for service, answer in zip(services, answers, strict=True):
        if isinstance(answer, OpsError):
            failures.append(str(answer))
            continue
        if isinstance(answer, BaseException):
            raise answer
        rows.extend({"service": service, **letter} for letter in answer)
    rows.sort(key=lambda r: str(r.get("created_at")), reverse=True)
    note = "\n".join(f"warning: {f}" for f in failures)
    return Result(
        {"dead_letters": rows, "unreachable": failures} if args.json else rows,
        columns=DEAD_LETTER_COLUMNS,
        code=1 if failures else 0,
        note=note,
    )


async def dead_letters_show(ops: Ops, args: argparse.Namespace) -> Result:
    """One dead letter with every field (payloads are never shown: they may carry PHI)."""
    letters = await ops.call(args.service, "GET", "/ops/dead-letters", params={"limit": 1000})
    found = next((d for d in letters if d["id"] == args.id), None)
    if found is None:
        raise OpsError(args.service, f"no dead letter {args.id} among the newest 1000", 404)
    return Result({"service": args.service, **found}, single=True)


async def dead_letters_redrive(ops: Ops, args: argparse.Namespace) -> Result:
    """Handle the dead letter again; its patient's parked messages follow in order."""
    answer = await ops.call(args.service, "POST", f"/ops/dead-letters/{args.id}/redrive")
    return Result({"service": args.service, "id": args.id, **(answer or {})}, single=True)


async def dead_letters_discard(ops: Ops, args: argparse.Namespace) -> Result:
    """Drop the dead letter; its patient's parked messages are released in order."""
    answer = await ops.call(args.service, "POST", f"/ops/dead-letters/{args.id}/discard")
    return Result({"service": args.service, "id": args.id, **(answer or {})}, single=True)


# -- outbox --------------------------------------------------------------------------------------


async def outbox_status(ops: Ops, args: argparse.Namespace) -> Result:
    """Outbox rows by status, per service."""
    services = [args.service] if args.service else list(SERVICES)
    answers = await asyncio.gather(
        *(ops.call(s, "GET", "/ops/outbox") for s in services), return_exceptions=True
    )
    rows: list[dict[str, Any]] = []
    code = 0
    for service, answer in zip(services, answers, strict=True):
        if isinstance(answer, OpsError):
            rows.append({"service": service, "error": str(answer)})
            code = 1
        elif isinstance(answer, BaseException):
            raise answer
        else:
            rows.append({"service": service, **answer})
    columns = ["service", "pending", "sent"]
    columns += sorted({k for r in rows for k in r} - {*columns, "error"})
    if code:
        columns.append("error")
    return Result(rows, columns=columns, code=code)


async def outbox_replay(ops: Ops, args: argparse.Namespace) -> Result:
    """Mark a service's sent events from `--since` on for re-publishing."""
    body = {"since": args.since.isoformat(), "topic": args.topic}
    answer = await ops.call(args.service, "POST", "/ops/outbox/replay", json=body)
    return Result({"service": args.service, **answer}, single=True)


# -- Subscriptions -------------------------------------------------------------------------------

SUBSCRIPTION_COLUMNS = (
    "topic",
    "subscription_id",
    "status",
    "last_event_number",
    "highest_event_number",
    "events_since_start",
    "last_notification_at",
    "heartbeat_missed_since",
)


async def subscriptions_status(ops: Ops, _args: argparse.Namespace) -> Result:
    """The connector's Subscriptions; exit 1 when one is not active or misses heartbeats."""
    rows = await ops.call(CONNECTOR, "GET", "/ops/subscriptions")
    unhealthy = [r for r in rows if r["status"] != "active" or r.get("heartbeat_missed_since")]
    return Result(rows, columns=SUBSCRIPTION_COLUMNS, code=1 if unhealthy else 0)


async def subscriptions_ensure(ops: Ops, _args: argparse.Namespace) -> Result:
    """Create missing Subscriptions, re-activate ones in error, catch up on gaps."""
    rows = await ops.call(CONNECTOR, "POST", "/ops/subscriptions/ensure")
    return Result(rows, columns=("topic", "subscription_id", "action", "status"))


async def subscriptions_recover(ops: Ops, args: argparse.Namespace) -> Result:
    """Ask the EHR for a Subscription's status and recover missing events now."""
    answer = await ops.call(CONNECTOR, "POST", f"/ops/subscriptions/{args.subscription_id}/recover")
    return Result(answer, single=True)


# -- back-fill -----------------------------------------------------------------------------------


async def backfill_start(ops: Ops, args: argparse.Namespace) -> Result:
    """Import a patient's history again from the EHR."""
    body = {"patient_fhir_id": args.fhir_id} if args.fhir_id else None
    answer = await ops.call(CONNECTOR, "POST", f"/ops/backfill/{args.patient_id}", json=body)
    return Result(answer, single=True)


async def backfill_status(ops: Ops, args: argparse.Namespace) -> Result:
    """The patient's latest back-fill: state and progress; exit 1 if it failed."""
    answer = await ops.call(CONNECTOR, "GET", f"/ops/backfill/{args.patient_id}")
    return Result(answer, single=True, code=1 if answer.get("state") == "failed" else 0)


# -- audit, canary -------------------------------------------------------------------------------


async def audit_verify(ops: Ops, _args: argparse.Namespace) -> Result:
    """Verify the gateway's PHI access log (keyed hash chain and signed checkpoints);
    exit 1 when it was tampered with."""
    answer = await ops.call("gateway", "GET", "/ops/audit/verify")
    note = (
        f"the access log is intact ({answer.get('rows', '?')} rows, "
        f"{answer.get('checkpoints', 0)} signed checkpoints)"
        if answer["intact"]
        else f"TAMPERED: {answer.get('problem') or 'the chain breaks'} "
        f"(row {answer['first_broken_id']})"
    )
    return Result(answer, single=True, code=0 if answer["intact"] else 1, note=note)


async def audit_export(ops: Ops, args: argparse.Namespace) -> Result:
    """The access log (a patient's, or everyone's) as FHIR R4 AuditEvents (IHE BALP) in a
    Bundle of type collection, oldest first: for an auditor or the EHR's audit repository."""
    params = {
        "patient": args.patient,
        "since": args.since.isoformat() if args.since else None,
        "until": args.until.isoformat() if args.until else None,
        "limit": args.limit,
    }
    bundle = await ops.call("gateway", "GET", "/ops/audit/export", params=params)
    return Result(bundle, document=True)


async def canary_run(ops: Ops, _args: argparse.Namespace) -> Result:
    """Run the synthetic canary once (EHR write to Kafka); exit 1 when it timed out."""
    answer = await ops.call(CONNECTOR, "POST", "/ops/canary")
    latency = answer.get("latency_s")
    note = "canary timed out" if latency is None else f"canary published in {latency:.2f} s"
    return Result(answer, single=True, code=1 if latency is None else 0, note=note)


# -- arguments -----------------------------------------------------------------------------------


def _aware(value: str) -> datetime:
    at = datetime.fromisoformat(value)
    if at.tzinfo is None:
        raise argparse.ArgumentTypeError("needs a time zone, e.g. 2026-12-03T08:00:00+00:00")
    return at


def parser() -> argparse.ArgumentParser:
    """The command line."""
    top = argparse.ArgumentParser(
        prog="portalctl",
        description="Operate the portal through its services' ops APIs.",
        epilog=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    top.add_argument("--json", action="store_true", help="print JSON instead of tables")
    top.add_argument("--timeout", type=float, default=30.0, help="seconds per HTTP call")
    groups = top.add_subparsers(dest="group", required=True)

    def group(name: str, text: str) -> Any:
        return groups.add_parser(name, help=text).add_subparsers(dest="action", required=True)

    def command(parent: Any, name: str, run: Command, text: str) -> argparse.ArgumentParser:
        sub: argparse.ArgumentParser = parent.add_parser(name, help=text, description=text)
        sub.set_defaults(run=run)
        return sub

    def service_arg(sub: argparse.ArgumentParser, *flags: str, optional: bool = False) -> None:
        names = flags or ("service",)
        nargs = "?" if optional else None
        sub.add_argument(*names, choices=SERVICES, metavar="SERVICE", nargs=nargs)

    dl = group("dead-letters", "dead letters of every service")
    ls = command(dl, "list", dead_letters_list, "list dead letters across the services")
    service_arg(ls, "--service")
    ls.add_argument("--status", choices=("open", "releasing", "redriven", "discarded"))
    ls.add_argument("--limit", type=int, default=100, help="per service")
    for name, run, text in (
        ("show", dead_letters_show, "show one dead letter"),
        ("redrive", dead_letters_redrive, "handle a dead letter again"),
        ("discard", dead_letters_discard, "drop a dead letter, release what it held back"),
    ):
        sub = command(dl, name, run, text)
        service_arg(sub)
        sub.add_argument("id", type=int)

    ob = group("outbox", "outbox status and replay")
    st = command(ob, "status", outbox_status, "outbox rows by status")
    service_arg(st, optional=True)
    rp = command(ob, "replay", outbox_replay, "re-publish a service's sent events")
    service_arg(rp)
    rp.add_argument("--since", required=True, type=_aware, help="ISO time with time zone")
    rp.add_argument("--topic", help="only this topic")

    sb = group("subscriptions", "the EHR Subscriptions of the ehr-connector")
    command(sb, "status", subscriptions_status, "each Subscription's state and event numbers")
    command(sb, "ensure", subscriptions_ensure, "create missing, re-activate failed ones")
    rc = command(sb, "recover", subscriptions_recover, "force recovery of one Subscription")
    rc.add_argument("subscription_id")

    bf = group("backfill", "history imports from the EHR")
    bs = command(bf, "start", backfill_start, "import a patient's history again")
    bs.add_argument("patient_id")
    bs.add_argument("--fhir-id", help="the EHR Patient id, if the patient is not linked")
    bp = command(bf, "status", backfill_status, "a patient's latest back-fill")
    bp.add_argument("patient_id")

    au = group("audit", "the gateway's tamper-evident access log")
    command(au, "verify", audit_verify, "verify the hash chain")
    ex = command(au, "export", audit_export, "the access log as FHIR AuditEvents (BALP)")
    ex.add_argument("--patient", help="the patient's portal id or EHR (FHIR) id")
    ex.add_argument("--since", type=_aware, help="ISO time with time zone")
    ex.add_argument("--until", type=_aware, help="ISO time with time zone (exclusive)")
    ex.add_argument("--limit", type=int, default=10_000, help="rows at most (oldest first)")
    ca = group("canary", "the synthetic inbound canary")
    command(ca, "run", canary_run, "run it once and report its latency")
    return top


async def run(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """Run the parsed command; returns the exit code."""
    command: Command = args.run
    try:
        token = ops_token()
        async with httpx.AsyncClient(timeout=args.timeout) as http:
            result = await command(Ops(http, token), args)
    except OpsError as exc:
        err.write(f"portalctl: {exc}\n")
        return 2 if exc.status is not None and 400 <= exc.status < 500 else 1
    result.write(out, args.json)
    return result.code


def main(argv: Sequence[str] | None = None) -> int:
    """Console-script entry point."""
    args = parser().parse_args(argv)
    return asyncio.run(run(args, sys.stdout, sys.stderr))
