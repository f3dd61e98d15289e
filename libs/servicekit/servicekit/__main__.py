"""Operator commands: `python -m servicekit relay|replay|migrate`.

Settings come from the environment like the service's own (`DATABASE_URL`,
`KAFKA_BOOTSTRAP_SERVERS`, `SERVICE_NAME`, ...).

* `relay` runs only the outbox relay (a separate process, or a second replica).
* `replay --since 2026-11-25T10:00:00+00:00 [--topic lab.resulted]` re-publishes sent events.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from datetime import datetime

from servicekit.db import Database
from servicekit.logging import configure_logging
from servicekit.outbox import OutboxRelay, replay
from servicekit.settings import ServiceSettings
from servicekit.telemetry import setup_tracing


async def _relay(settings: ServiceSettings) -> None:
    db = Database(settings.resolved_database_url())
    relay = OutboxRelay(db, settings)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, relay.stop)
    try:
        await relay.run()
    finally:
        await db.dispose()


async def _replay(settings: ServiceSettings, since: datetime, topic: str | None) -> int:
    db = Database(settings.resolved_database_url())
    try:
        return await replay(db, since, settings.topic(topic) if topic else None)
    finally:
        await db.dispose()


def main(argv: list[str]) -> int:
    """Entry point; returns the exit code."""
    parser = argparse.ArgumentParser(prog="python -m servicekit")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("relay", help="run the outbox relay until SIGTERM")
    rp = sub.add_parser("replay", help="re-publish events sent since a time")
    rp.add_argument("--since", required=True, type=datetime.fromisoformat)
    rp.add_argument("--topic")
    args = parser.parse_args(argv)
    settings = ServiceSettings()
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
