"""The supervisor against fake services: order, readiness, prefixed output, clean stop."""

from __future__ import annotations

import io
import itertools
import sys
from pathlib import Path

import httpx
import pytest

from devstack._paths import free_port
from devstack.postgres import database_url, drop_database
from devstack.supervisor import (
    Output,
    ProcessSpec,
    ServiceDef,
    StackConfig,
    StartupError,
    Supervisor,
    check,
)

FAKEAPPS = Path(__file__).parent / "fakeapps"


def _spec(name: str, **env: str) -> ProcessSpec:
    port = free_port()
    return ProcessSpec(
        name=name,
        argv=[
            sys.executable,
            "-m",
            "uvicorn",
            "--factory",
            "fakeapp:create_app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        port=port,
        env={"PYTHONPATH": str(FAKEAPPS), "SERVICE_NAME": name, **env},
    )


def _events(text: str, event: str) -> list[tuple[str, float]]:
    """(service, time) of every `<event> <service> <time>` line in the prefixed output."""
    found = []
    for line in text.splitlines():
        _, _, message = line.partition("| ")
        parts = message.split()
        if len(parts) == 3 and parts[0] == event:
            found.append((parts[1], float(parts[2])))
    return found


async def test_starts_in_order_waits_for_readiness_and_stops_one_by_one() -> None:
    sink = io.StringIO()
    supervisor = Supervisor(Output(sink, colour=False), ready_timeout=30)
    specs = [
        _spec("alpha", FAKE_READY_AFTER="1.0", FAKE_STOP_DELAY="0.3"),
        _spec("beta", FAKE_STOP_DELAY="0.3"),
        _spec("gamma", FAKE_STOP_DELAY="0.3"),
    ]
    try:
        await supervisor.start_all(specs)
        async with httpx.AsyncClient() as client:
            for spec in specs:
                assert (await client.get(spec.url("/readyz"))).status_code == 200
    finally:
        await supervisor.stop_all()
    text = sink.getvalue()

    startups = _events(text, "startup")
    assert [name for name, _ in startups] == ["alpha", "beta", "gamma"]
    # beta only starts once alpha answered /readyz, which takes alpha a second.
    assert startups[1][1] - startups[0][1] >= 1.0

    begins = _events(text, "shutdown-begin")
    ends = dict(_events(text, "shutdown-end"))
    assert [name for name, _ in begins] == ["gamma", "beta", "alpha"]
    for (name, _), (next_name, next_begin) in itertools.pairwise(begins):
        assert ends[name] <= next_begin, f"{next_name} began stopping before {name} had stopped"

    prefixed = [line for line in text.splitlines() if "startup " in line]
    assert all(line.split("|")[0].strip() in {"alpha", "beta", "gamma"} for line in prefixed)
    assert supervisor.processes == []


async def test_a_process_that_dies_during_start_up_stops_the_others() -> None:
    sink = io.StringIO()
    supervisor = Supervisor(Output(sink, colour=False), ready_timeout=30)
    first = _spec("first")
    specs = [first, _spec("broken", FAKE_CRASH="1"), _spec("never")]
    with pytest.raises(StartupError) as caught:
        await supervisor.start_all(specs)
    error = caught.value
    assert error.name == "broken"
    assert "exited with code" in error.reason
    assert any("cannot connect to the database" in line for line in error.lines)
    assert supervisor.processes == []
    assert [name for name, _ in _events(sink.getvalue(), "shutdown-begin")] == ["first"]
    assert "never" not in sink.getvalue()
    async with httpx.AsyncClient() as client:
        with pytest.raises(httpx.ConnectError):
            await client.get(first.url("/healthz"))


async def test_not_ready_in_time_is_a_start_up_failure() -> None:
    supervisor = Supervisor(Output(io.StringIO(), colour=False), ready_timeout=1.5)
    with pytest.raises(StartupError, match="not ready after"):
        await supervisor.start_all([_spec("slow", FAKE_READY_AFTER="60")])
    assert supervisor.processes == []


async def test_colour_prefixes_only_when_asked() -> None:
    plain, coloured = io.StringIO(), io.StringIO()
    Output(plain, colour=False).line("gateway", "hello")
    Output(coloured, colour=True).line("gateway", "hello")
    assert plain.getvalue().startswith("gateway ")
    assert plain.getvalue().rstrip().endswith("| hello")
    assert coloured.getvalue().startswith("\033[")


async def test_check_runs_a_stack_on_tansu_and_verifies_every_endpoint(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, postgres_url: str
) -> None:
    # The supervisor only starts packages this interpreter can import.
    monkeypatch.syspath_prepend(str(FAKEAPPS))
    services = [
        ServiceDef(name="fake-one", package="fakeapp", port=free_port(), app="fakeapp:create_app"),
        ServiceDef(name="fake-two", package="fakeapp", port=free_port(), app="fakeapp:create_app"),
        ServiceDef(
            name="absent",
            package="no_such_package_here",
            port=free_port(),
            app="no_such_package_here.app:create_app",
            optional=True,
        ),
    ]
    sink = io.StringIO()
    config = StackConfig(
        kafka="tansu",
        kafka_port=19096,
        root=tmp_path,
        services=services,
        topics=[("fake.topic", 2)],
        database_url=postgres_url,
        extra_env={"PYTHONPATH": str(FAKEAPPS)},
        ready_timeout=30,
    )
    try:
        code = await check(config, Output(sink, colour=False))
    finally:
        await drop_database("portal_fakeapp", postgres_url)
    text = sink.getvalue()
    assert code == 0, text
    for service in services[:2]:
        for path in ("/readyz", "/healthz", "/metrics"):
            assert f"ok   http://127.0.0.1:{service.port}{path} -> 200" in text
    assert "absent skipped: package no_such_package_here not installed" in text
    assert "all endpoints answered 200" in text
    assert "stopping tansu broker" in text
    # The services start together, so their lines come in any order: match them by port.
    settings = {}
    for line in text.splitlines():
        if "| settings " in line:
            values = dict(item.split("=", 1) for item in line.split("| settings ", 1)[1].split())
            settings[values["HTTP_PORT"]] = values
    assert len(settings) == 2
    for service in services[:2]:
        assert settings[str(service.port)] == {
            "HTTP_PORT": str(service.port),
            "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:19096",
            "KAFKA_ENABLE_IDEMPOTENCE": "false",
            # Tansu answers a fetch only when its wait expires: short where a patient waits.
            "KAFKA_INTERACTIVE_FETCH_MAX_WAIT_MS": "50",
            "DATABASE_URL": database_url(postgres_url, "portal_fakeapp"),
            "LOG_FORMAT": "json",
        }


async def test_a_database_url_that_is_not_postgresql_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.syspath_prepend(str(FAKEAPPS))
    sink = io.StringIO()
    config = StackConfig(
        kafka_port=19096,
        root=tmp_path,
        services=[ServiceDef("fake", "fakeapp", free_port(), "fakeapp:create_app")],
        topics=[],
        database_url="mysql+aiomysql://user@host/shared",
    )
    assert await check(config, Output(sink, colour=False)) == 1
    text = sink.getvalue()
    assert "DATABASE_URL must be a PostgreSQL server URL" in text
    assert "stopping tansu broker" in text


async def test_missing_service_packages_fail_before_anything_starts(tmp_path: Path) -> None:
    sink = io.StringIO()
    config = StackConfig(
        kafka_port=19096,
        root=tmp_path,
        services=[ServiceDef("ghost", "no_such_service_pkg", free_port(), "x.app:create_app")],
    )
    assert await check(config, Output(sink, colour=False)) == 1
    assert "packages not installed: no_such_service_pkg" in sink.getvalue()
    assert "broker" not in sink.getvalue()


async def test_parallel_start_spawns_all_before_any_is_ready() -> None:
    sink = io.StringIO()
    supervisor = Supervisor(Output(sink, colour=False), ready_timeout=30)
    specs = [_spec(name, FAKE_READY_AFTER="5") for name in ("p1", "p2", "p3")]
    try:
        await supervisor.start_all(specs, parallel=True)
    finally:
        await supervisor.stop_all()
    startups = dict(_events(sink.getvalue(), "startup"))
    assert set(startups) == {"p1", "p2", "p3"}
    # Sequentially, each would start only after the previous one's 5 s to readiness.
    assert max(startups.values()) - min(startups.values()) < 5
    assert sink.getvalue().count("is ready on") == 3


async def test_parallel_start_failure_stops_everything() -> None:
    supervisor = Supervisor(Output(io.StringIO(), colour=False), ready_timeout=30)
    specs = [_spec("ok1", FAKE_READY_AFTER="2"), _spec("bad", FAKE_CRASH="1"), _spec("ok2")]
    with pytest.raises(StartupError) as caught:
        await supervisor.start_all(specs, parallel=True)
    assert caught.value.name == "bad"
    assert supervisor.processes == []
    async with httpx.AsyncClient() as client:
        for spec in (specs[0], specs[2]):
            with pytest.raises(httpx.ConnectError):
                await client.get(spec.url("/healthz"))


def test_services_keep_idle_connections_longer_than_their_clients(tmp_path: Path) -> None:
    # At uvicorn's default 5 s, equal to httpx's, a client could send on a connection the
    # very moment the service closed it: "Server disconnected without sending a response".
    from devstack.supervisor import SERVER_KEEP_ALIVE_S, SERVICES, Stack

    base = "postgresql+asyncpg://portal:portal@127.0.0.1:5432"
    stack = Stack(StackConfig(database_url=base, root=tmp_path))
    client_idle_s = httpx.Limits().keepalive_expiry
    assert client_idle_s is not None
    assert max(client_idle_s, 60) < SERVER_KEEP_ALIVE_S
    for service in SERVICES:
        argv = stack._spec(service, f"{base}/x").argv
        assert argv[argv.index("--timeout-keep-alive") + 1] == str(SERVER_KEEP_ALIVE_S)
    dockerfile = Path(__file__).parents[3] / "deploy" / "docker" / "Dockerfile"
    cmd = next(line for line in dockerfile.read_text().splitlines() if line.startswith("CMD"))
    assert f"--timeout-keep-alive {SERVER_KEEP_ALIVE_S}" in cmd
