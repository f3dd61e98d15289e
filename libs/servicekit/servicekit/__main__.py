"""Operator commands: `python -m servicekit relay|replay` (migrations run at a
service's start-up, `AUTO_MIGRATE`).

Settings come from the environment like the service's own (`DATABASE_URL`,
`KAFKA_BOOTSTRAP_SERVERS`, ...). Both commands act on one service's outbox, so the service
is named explicitly (`--service gateway`, or `SERVICE_NAME`) and `DATABASE_URL` must name
its database: guessing either would publish from, or create, the wrong database.

* `relay --service NAME` runs only the outbox relay (a separate process, or a replica).
* `replay --service NAME --since 2026-11-25T10:00:00+00:00 [--topic lab.resulted]`
  re-publishes sent events. On a running stack prefer `portalctl outbox replay NAME`, which
  goes through the service's ops API.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from datetime import datetime

from servicekit.crypto import Cipher, EncryptionSettings, Keyring
from servicekit.db import Database
from servicekit.db_tls import DatabaseTLS
from servicekit.logging import configure_logging
from servicekit.outbox import OutboxRelay, replay
from servicekit.settings import ServiceSettings
from servicekit.telemetry import setup_tracing


def _cipher(environment: str) -> Cipher:
    """The service's keys, to open sealed payloads (servicekit.sealing): from the same
    ENCRYPTION_KEYS / ENCRYPTION_KEYS_FILE as the service; outside prod the development key.
    Every service seals its outbox, so in prod a relay without keys refuses to start (as
    the service does) rather than fail on its first sealed row."""
    return Cipher(Keyring.from_settings(EncryptionSettings(), environment))


async def _relay(settings: ServiceSettings) -> None:
    db = Database(settings.resolved_database_url(), tls=DatabaseTLS.of(settings))
    relay = OutboxRelay(db, settings, cipher=_cipher(settings.environment))
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, relay.stop)
    try:
        await relay.run()
    finally:
        await db.dispose()


async def _replay(settings: ServiceSettings, since: datetime, topic: str | None) -> int:
    db = Database(settings.resolved_database_url(), tls=DatabaseTLS.of(settings))
    try:
        return await replay(db, since, settings.topic(topic) if topic else None)
    finally:
        await db.dispose()


def main(argv: list[str]) -> int:
    """Entry point; returns the exit code."""
    parser = argparse.ArgumentParser(prog="python -m servicekit")
    sub = parser.add_subparsers(dest="command", required=True)
    service_help = "the service whose outbox this is (default: $SERVICE_NAME; required)"
    rl = sub.add_parser("relay", help="run the outbox relay until SIGTERM")
    rl.add_argument("--service", default=os.environ.get("SERVICE_NAME"), help=service_help)
    rp = sub.add_parser("replay", help="re-publish events sent since a time")
    rp.add_argument("--service", default=os.environ.get("SERVICE_NAME"), help=service_help)
    rp.add_argument("--since", required=True, type=datetime.fromisoformat)
    rp.add_argument("--topic")
    args = parser.parse_args(argv)
    if not args.service:
        parser.error(
            f"{args.command} needs the service name: --service NAME or SERVICE_NAME "
            "(gateway, records, scheduling, messaging, triage, ehr-connector)"
        )
    if not os.environ.get("DATABASE_URL"):
        parser.error(f"{args.command} needs DATABASE_URL: the {args.service} service's database")
    settings = ServiceSettings(service_name=args.service)
    configure_logging(settings.service_name, settings.log_level, settings.log_format)
    if args.command == "relay":
        setup_tracing(settings.service_name, settings.otlp_endpoint)
        asyncio.run(_relay(settings))
        return 0
    if args.since.tzinfo is None:
        parser.error("--since needs a time zone, e.g. 2026-11-25T10:00:00+00:00")
    count = asyncio.run(_replay(settings, args.since, args.topic))
    sys.stdout.write(f"{count} events marked for re-publishing\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
