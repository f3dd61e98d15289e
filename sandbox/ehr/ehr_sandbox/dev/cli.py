"""Command line for a running sandbox: simulate clinician/lab actions, set faults, list patients.

    python -m ehr_sandbox simulate lab-result --patient demo-alice -s panel=cbc -s abnormal=true
    python -m ehr_sandbox simulate message-reply --set text="Your results look fine."
    python -m ehr_sandbox faults set '{"error_rate": 0.2}'   |  faults show  |  faults reset
    python -m ehr_sandbox patients

It talks HTTP only (like any other client), to `--url` (default `SANDBOX_BASE_URL`) with
`--token` (default `SANDBOX_ADMIN_TOKEN`). Exit status: 0 on success, 1 when the sandbox
answers with an error (its OperationOutcome goes to stderr), 2 for a usage error.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

import httpx

from ehr_sandbox.dev.simulate import ACTIONS
from ehr_sandbox.settings import SandboxSettings


def _value(raw: str) -> Any:
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def _fields(pairs: Sequence[str]) -> dict[str, Any]:
    body: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"--set expects KEY=VALUE, got {pair!r}")
        body[key] = _value(raw)
    return body


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the CLI."""
    defaults = SandboxSettings()
    parser = argparse.ArgumentParser(
        prog="python -m ehr_sandbox", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--url", default=defaults.base_url, help="sandbox base URL")
    parser.add_argument("--token", default=defaults.admin_token, help="admin bearer token")
    parser.add_argument("--timeout", type=float, default=30.0, help="HTTP timeout in seconds")
    commands = parser.add_subparsers(dest="command", required=True)

    simulate = commands.add_parser("simulate", help="perform a clinician or lab action")
    simulate.add_argument("action", choices=ACTIONS)
    simulate.add_argument("--patient", help="Patient id (default: a demo patient)")
    simulate.add_argument(
        "--set",
        "-s",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="another field of the request body (VALUE parsed as JSON when it is JSON)",
    )

    faults = commands.add_parser("faults", help="show, set or reset fault injection")
    fault_commands = faults.add_subparsers(dest="fault_command", required=True)
    fault_set = fault_commands.add_parser("set", help="replace the fault configuration")
    fault_set.add_argument("config", help="JSON, e.g. '{\"latency_ms\": 200}'")
    fault_commands.add_parser("show", help="print the fault configuration")
    fault_commands.add_parser("reset", help="turn every fault off")

    commands.add_parser("patients", help="list the demo patients")
    return parser


def _request(args: argparse.Namespace) -> tuple[str, str, dict[str, Any] | None]:
    if args.command == "simulate":
        body = _fields(args.set)
        if args.patient:
            body["patient"] = args.patient
        return "POST", f"/sandbox/simulate/{args.action}", body
    if args.command == "faults":
        if args.fault_command == "set":
            config = _value(args.config)
            if not isinstance(config, dict):
                raise SystemExit("faults set expects a JSON object")
            return "POST", "/sandbox/faults", config
        if args.fault_command == "reset":
            return "DELETE", "/sandbox/faults", None
        return "GET", "/sandbox/faults", None
    return "GET", "/dev/patients", None


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit status."""
    args = build_parser().parse_args(argv)
    method, path, body = _request(args)
    headers = {"Authorization": f"Bearer {args.token}"}
    try:
        with httpx.Client(base_url=args.url.rstrip("/"), timeout=args.timeout) as client:
            response = client.request(method, path, json=body, headers=headers)
    except httpx.HTTPError as exc:
        sys.stderr.write(f"cannot reach the sandbox at {args.url}: {exc}\n")
        return 1
    stream = sys.stdout if response.is_success else sys.stderr
    try:
        stream.write(json.dumps(response.json(), indent=2) + "\n")
    except ValueError:
        stream.write(response.text + "\n")
    return 0 if response.is_success else 1
