"""`python -m devstack`: run the local stack, a broker, PostgreSQL or the topics by hand.

up          broker + topics + EHR sandbox + the six services, in the foreground
check       start the stack, verify every service's /readyz, /healthz, /metrics, stop
broker      only a Kafka broker (port 9092) in the foreground, with the topics
postgres    start the embedded PostgreSQL (.data/postgres) in the background, print its URL
            (`postgres --stop` stops it)
topics      create the registry's topics on a running broker
kafka-jars  fetch Apache Kafka's jars with Maven
reliability-report
            the acceptance journeys and fault scenarios: a table and one JSON line
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from devstack._paths import repo_root
from devstack.brokers import BROKER_KINDS, BrokerError, BrokerKind, fetch_kafka_jars, make_broker
from devstack.hapi import HapiError, HapiServer, build_hapi
from devstack.postgres import EmbeddedPostgres, PostgresUnavailable
from devstack.supervisor import Output, StackConfig, check, follow_log, up
from devstack.topics import ensure_topics


def _kind(value: str) -> BrokerKind:
    for kind in BROKER_KINDS:
        if kind == value:
            return kind
    raise argparse.ArgumentTypeError(f"choose one of {', '.join(BROKER_KINDS)}")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m devstack",
        description="Developer and CI tooling for the portal.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    default_kind = os.environ.get("KAFKA") or "tansu"

    for name, text in (
        ("up", "run the whole stack in the foreground (Ctrl-C stops it)"),
        ("check", "start the stack, check every service's endpoints, stop it"),
    ):
        sub = commands.add_parser(name, help=text, description=text)
        sub.add_argument("--kafka", type=_kind, default=default_kind, help="broker kind")
        sub.add_argument("--kafka-port", type=int, default=9092, help="broker port")
        sub.add_argument(
            "--bootstrap",
            default="",
            help="use this running broker (host:port) instead of starting one",
        )
        sub.add_argument(
            "--sequential",
            action="store_true",
            help="start the services one by one, each ready before the next",
        )
        sub.add_argument(
            "--ready-timeout", type=float, default=90.0, help="seconds each process may take"
        )
        sub.add_argument(
            "--tracing", action="store_true", help="also run the trace sink (OTLP on 4318)"
        )
        sub.add_argument(
            "--observability",
            action="store_true",
            help="also run Prometheus (9090) with the alert rules, if installed",
        )
        sub.add_argument(
            "--data-dir",
            type=Path,
            default=None,
            help="where the stack keeps its data (default: .data of the repository)",
        )

    broker = commands.add_parser("broker", help="run only a Kafka broker in the foreground")
    broker.add_argument("--kafka", type=_kind, default=default_kind, help="broker kind")
    broker.add_argument("--port", type=int, default=9092)
    broker.add_argument("--data-dir", type=Path, help="default: .data/kafka or .data/tansu")
    broker.add_argument("--no-topics", action="store_true", help="do not create the topics")

    postgres = commands.add_parser(
        "postgres", help="start the embedded PostgreSQL in the background, print its URL"
    )
    postgres.add_argument("--data-dir", type=Path, help="default: .data/postgres")
    postgres.add_argument("--stop", action="store_true", help="stop it instead")

    topics = commands.add_parser("topics", help="create the registry's topics on a broker")
    topics.add_argument(
        "--bootstrap",
        default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS") or "127.0.0.1:9092",
    )
    topics.add_argument("--prefix", default="", help="prefix of every topic name")

    report = commands.add_parser(
        "reliability-report", help="run the journeys and fault scenarios, print the figures"
    )
    report.add_argument("--kafka", type=_kind, default=default_kind, help="broker kind")
    report.add_argument("pytest_args", nargs="*", help="more pytest arguments")
    hapi = commands.add_parser("hapi", help="run HAPI FHIR (R4, H2 in memory) in the foreground")
    hapi.add_argument("--port", type=int, default=8091, help="port (not 8090: the sandbox's)")
    hapi.add_argument("--topics-file", type=Path, help="transaction Bundle of topics to load")
    hapi_jars = commands.add_parser("hapi-jars", help="build HAPI FHIR's jars with Maven")
    hapi_jars.add_argument("--force", action="store_true", help="build even if up to date")

    jars = commands.add_parser("kafka-jars", help="fetch Apache Kafka's jars with Maven")
    jars.add_argument("--force", action="store_true", help="fetch even if lib/ has jars")
    return parser


def _stack_config(args: argparse.Namespace) -> StackConfig:
    return StackConfig(
        kafka=args.kafka,
        kafka_port=args.kafka_port,
        bootstrap=args.bootstrap,
        database_url=os.environ.get("DATABASE_URL", ""),
        sequential=args.sequential,
        ready_timeout=args.ready_timeout,
        tracing=args.tracing,
        observability=args.observability,
        data_dir=args.data_dir,
    )


async def _broker(args: argparse.Namespace) -> int:
    kind: BrokerKind = args.kafka
    data_dir = args.data_dir or repo_root() / ".data" / ("kafka" if kind == "apache" else "tansu")
    data_dir.mkdir(parents=True, exist_ok=True)
    broker = make_broker(kind, port=args.port, data_dir=data_dir)
    output = Output()
    offset = broker.log_path.stat().st_size if broker.log_path.exists() else 0
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    tail = asyncio.create_task(follow_log(broker.log_path, offset, output, "kafka"))
    try:
        await broker.start()
        await broker.wait_ready(timeout=120.0)
        if not args.no_topics:
            created = await ensure_topics(broker.bootstrap_servers)
            output.line("devstack", f"{len(created)} topics ready")
        output.line(
            "devstack",
            f"{kind} broker ready on {broker.bootstrap_servers} "
            f"(idempotent producers: {'on' if broker.enable_idempotence else 'off'}); "
            "Ctrl-C stops it",
        )
        waiter = asyncio.create_task(stop.wait())
        while not waiter.done():
            await asyncio.wait({waiter}, timeout=0.5)
            if not broker.is_running():
                waiter.cancel()
                output.line("devstack", "the broker exited")
                return 1
        return 0
    except BrokerError as exc:
        output.line("devstack", str(exc))
        return 1
    finally:
        await broker.stop()
        await asyncio.sleep(0.3)
        tail.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await tail


async def _hapi(args: argparse.Namespace) -> int:
    data_dir = repo_root() / ".data" / "hapi"
    data_dir.mkdir(parents=True, exist_ok=True)
    server = HapiServer(port=args.port, data_dir=data_dir, topics_file=args.topics_file)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await server.start()
        await server.wait_ready()
        print(f"HAPI FHIR ready at {server.base_url} (log: {server.log_path}); Ctrl-C stops it")
        while not stop.is_set() and server.is_running():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)
        return 0 if stop.is_set() else 1
    except HapiError as exc:
        print(f"devstack hapi: {exc}", file=sys.stderr)
        return 1
    finally:
        await server.stop()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python -m devstack`; returns the exit code."""
    args = _parser().parse_args(argv)
    command: str = args.command
    if command == "up":
        return asyncio.run(up(_stack_config(args)))
    if command == "check":
        return asyncio.run(check(_stack_config(args)))
    if command == "broker":
        return asyncio.run(_broker(args))
    if command == "postgres":
        server = EmbeddedPostgres(args.data_dir or repo_root() / ".data" / "postgres")
        try:
            if args.stop:
                server.stop()
            else:
                print(server.start())
        except PostgresUnavailable as exc:
            print(f"devstack postgres: {exc}", file=sys.stderr)
            return 1
        return 0
    if command == "topics":
        created = asyncio.run(ensure_topics(args.bootstrap, prefix=args.prefix))
        for topic, partitions in sorted(created.items()):
            print(f"{topic}\t{partitions}")
        return 0
    if command == "reliability-report":
        from devstack.reliability import run

        return run(args.kafka, list(args.pytest_args))
    if command == "hapi":
        return asyncio.run(_hapi(args))
    if command == "hapi-jars":
        try:
            print(build_hapi(force=args.force))
        except HapiError as exc:
            print(f"devstack hapi-jars: {exc}", file=sys.stderr)
            return 1
        return 0
    if command == "kafka-jars":
        try:
            print(fetch_kafka_jars(force=args.force))
        except BrokerError as exc:
            print(f"devstack kafka-jars: {exc}", file=sys.stderr)
            return 1
        return 0
    raise AssertionError(f"unhandled command {command}")


if __name__ == "__main__":
    sys.exit(main())
