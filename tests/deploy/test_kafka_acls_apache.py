"""The Kafka logins and ACLs of deploy/k8s hold on a real Apache Kafka 4 broker.

The broker here has SASL_PLAINTEXT and SASL_SSL listeners with SCRAM-SHA-512 and the
StandardAuthorizer, as the Strimzi listener of components/kafka-strimzi has (TLS there).
One service, messaging, gets the SCRAM user and exactly the ACLs `gen_kafka_users.py`
generates for it from its definition. Then the kit's own clients, configured only through the settings a
Deployment sets (KAFKA_SECURITY_PROTOCOL, KAFKA_SASL_*):

- publish what messaging publishes (the outbox relay's producer and its admin client) and
  consume what it consumes (FastStream's broker, as `build_broker` makes it);
- fail to start with a clear error when the password is wrong;
- log in over TLS (SASL_SSL) verifying the broker against KAFKA_SSL_CA_FILE, and refuse a
  broker whose certificate another CA signed;
- are refused when writing a topic messaging does not publish (`triage.completed`), or
  reading a topic and group that are another service's.

Runs with KAFKA=apache, as in CI (`make test KAFKA=apache`); the broker is its own, started
by this module (Java 17 and the jars of `make kafka-jars`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import pytest_asyncio
from aiokafka import AIOKafkaConsumer
from aiokafka.errors import (
    GroupAuthorizationFailedError,
    KafkaError,
    TopicAuthorizationFailedError,
)
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from faststream.kafka import KafkaBroker

from devstack.brokers import ApacheKafkaBroker
from devstack.topics import ensure_topics
from servicekit import kafka_security
from servicekit.app import ServiceDefinition, create_service
from servicekit.broker_loss import BrokerIdentity
from servicekit.outbox import make_producer
from servicekit.settings import ServiceSettings
from servicekit.testing import eventually

from .test_k8s_manifests import _tool

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        os.environ.get("KAFKA") != "apache",
        reason="starts its own Apache Kafka with SASL and ACLs: runs with KAFKA=apache (as in CI)",
    ),
]

SERVICE = "messaging"
# The service below never reaches its database: only its broker connection is looked at.
UNCONNECTED = "postgresql+asyncpg://unused@127.0.0.1:9/unused"
GRANT_ACLS = Path(__file__).with_name("kafka_acls") / "GrantAcls.java"


class ScramKafka(ApacheKafkaBroker):
    """Apache Kafka with two more listeners for the services, both SCRAM-SHA-512 with every
    request authorized by the StandardAuthorizer: SASL_PLAINTEXT, and SASL_SSL with a
    certificate from a CA of the test's own (as Strimzi's listener has its cluster CA's).
    The first (PLAINTEXT) listener is the operator's door, as Strimzi's own replication
    listener is: its anonymous principal is the super user that creates topics and ACLs."""

    def __init__(self, *, data_dir: Path, users: dict[str, str]) -> None:
        super().__init__(data_dir=data_dir)
        self.users = users
        self.sasl_port = _free_port()
        self.tls_port = _free_port()
        self.ca_file = data_dir / "ca.crt"
        self.keystore = data_dir / "broker.pem"

    @property
    def sasl_bootstrap(self) -> str:
        """Where the services connect without TLS."""
        return f"{self.host}:{self.sasl_port}"

    @property
    def tls_bootstrap(self) -> str:
        """Where the services connect over TLS."""
        return f"{self.host}:{self.tls_port}"

    async def prepare(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        ca_pem, keystore_pem = _broker_certificate(self.host)
        self.ca_file.write_bytes(ca_pem)
        self.keystore.write_bytes(keystore_pem)
        await super().prepare()

    def server_properties(self) -> str:
        lines = super().server_properties().splitlines()
        props = dict(line.split("=", 1) for line in lines)
        services = f"SERVICES://{self.host}:{self.sasl_port},SECURE://{self.host}:{self.tls_port}"
        props["listeners"] += f",{services}"
        props["advertised.listeners"] += f",{services}"
        props["listener.security.protocol.map"] += ",SERVICES:SASL_PLAINTEXT,SECURE:SASL_SSL"
        scram = "org.apache.kafka.common.security.scram.ScramLoginModule required;"
        props |= {
            "sasl.enabled.mechanisms": "SCRAM-SHA-512",
            "listener.name.services.sasl.enabled.mechanisms": "SCRAM-SHA-512",
            "listener.name.services.scram-sha-512.sasl.jaas.config": scram,
            "listener.name.secure.sasl.enabled.mechanisms": "SCRAM-SHA-512",
            "listener.name.secure.scram-sha-512.sasl.jaas.config": scram,
            # A PEM keystore: the unencrypted key and the certificate, in one file.
            "listener.name.secure.ssl.keystore.type": "PEM",
            "listener.name.secure.ssl.keystore.location": str(self.keystore),
            "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
            "super.users": "User:ANONYMOUS",
            "allow.everyone.if.no.acl.found": "false",
            "auto.create.topics.enable": "false",
        }
        return "".join(f"{key}={value}\n" for key, value in props.items())

    def format_options(self) -> list[str]:
        # SCRAM credentials live in the KRaft metadata log, written when it is formatted.
        options = []
        for user, password in self.users.items():
            options += ["--add-scram", f"SCRAM-SHA-512=[name={user},password={password}]"]
        return options

    def grant(self, acls: list[str]) -> None:
        """Create allow ACLs ("<principal> <type> <name> <operation>") as the super user."""
        lib = self._lib_dir()
        result = subprocess.run(
            [
                self._java(),
                f"-Dlog4j2.configurationFile={self.data_dir / 'log4j2.properties'}",
                "-cp",
                f"{lib}/*",
                str(GRANT_ACLS),
                self.bootstrap_servers,
                *acls,
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == 0, f"GrantAcls failed:\n{result.stdout}\n{result.stderr}"


async def _true(value: bool) -> bool:
    return value


def _certificate(
    subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Name, signer: Any, **extra: Any
) -> x509.Certificate:
    now = datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
    )
    for extension, critical in extra.values():
        builder = builder.add_extension(extension, critical=critical)
    return builder.sign(signer, hashes.SHA256())


def _new_ca() -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test cluster CA")])
    cert = _certificate(
        "test cluster CA",
        key,
        name,
        key,
        ca=(x509.BasicConstraints(ca=True, path_length=None), True),
        usage=(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            True,
        ),
    )
    return key, cert


def _broker_certificate(host: str) -> tuple[bytes, bytes]:
    """A new CA (PEM) and the broker's keystore (PEM: its key and certificate, for `host`)."""
    ca_key, ca_cert = _new_ca()
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _certificate(
        "broker",
        key,
        ca_cert.subject,
        ca_key,
        san=(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(host))]
            ),
            False,
        ),
    )
    pem = serialization.Encoding.PEM
    keystore = key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ) + cert.public_bytes(pem)
    return ca_cert.public_bytes(pem), keystore


def _free_port() -> int:
    from devstack._paths import free_port

    return free_port("127.0.0.1")


def _generated_acls(gen_users: ModuleType, service: str) -> list[str]:
    """The ACLs of `service`'s KafkaUser in users.yaml, as GrantAcls arguments."""
    access = next(a for a in gen_users.services() if a.service == service)
    return [
        f"User:{access.user} {acl.resource_type} {acl.name} {operation}"
        for acl in access.acls()
        for operation in acl.operations
    ]


class Secured:
    """The running broker and what the tests need of it."""

    def __init__(self, broker: ScramKafka, user: str, password: str, groups: set[str]) -> None:
        self.broker = broker
        self.user = user
        self.password = password
        self.groups = groups

    def settings(self, password: str | None = None) -> ServiceSettings:
        """messaging's settings as its Deployment gives them (SASL, its user)."""
        return ServiceSettings(
            service_name=SERVICE,
            kafka_bootstrap_servers=self.broker.sasl_bootstrap,
            kafka_enable_idempotence=True,
            kafka_security_protocol="SASL_PLAINTEXT",
            kafka_sasl_mechanism="SCRAM-SHA-512",
            kafka_sasl_username=self.user,
            kafka_sasl_password=self.password if password is None else password,
            outbox_publish_timeout_s=10.0,
        )


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def secured() -> AsyncIterator[Secured]:
    gen_users = _tool("gen_kafka_users")
    access = next(a for a in gen_users.services() if a.service == SERVICE)
    password = uuid.uuid4().hex
    data_dir = Path(tempfile.mkdtemp(prefix="portal-kafka-scram-"))
    broker = ScramKafka(data_dir=data_dir, users={access.user: password})
    await broker.start()
    try:
        await broker.wait_ready(timeout=180)
        topics = {"message.sent", "message.received", "triage.completed", "appointment.booked"}
        topics |= {f"{t}.dlq" for t in topics}
        await ensure_topics(broker.bootstrap_servers, names_and_partitions=[(t, 1) for t in topics])
        await asyncio.to_thread(broker.grant, _generated_acls(gen_users, SERVICE))
        yield Secured(broker, access.user, password, access.groups)
    finally:
        await broker.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


async def test_the_service_publishes_and_consumes_its_own_topics(secured: Secured) -> None:
    settings = secured.settings()
    # The outbox relay's admin client (which cluster acknowledged) and its producer.
    identity = BrokerIdentity(settings)
    try:
        assert await identity.cluster_id()
    finally:
        await identity.close()
    producer = make_producer(settings)
    await producer.start()
    try:
        sent = await producer.send_and_wait("message.sent", b"sent", key=b"p1")
        assert sent.topic == "message.sent"
    finally:
        await producer.stop()

    # What another service published for messaging (the super user plays that part), read
    # by FastStream's broker with the security `build_broker` gives it, in one of
    # messaging's own consumer groups.
    await _publish_as_super_user(secured, "message.received", b"received")
    got: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
    broker = KafkaBroker(
        settings.kafka_bootstrap_servers,
        client_id=SERVICE,
        security=kafka_security.security(settings),
    )

    @broker.subscriber(
        "message.received", group_id=sorted(secured.groups)[0], auto_offset_reset="earliest"
    )
    async def handle(body: bytes) -> None:
        if not got.done():
            got.set_result(body)

    async with broker:
        await broker.start()
        assert await asyncio.wait_for(got, timeout=60) == b"received"


async def test_a_wrong_password_fails_start_up_clearly(secured: Secured) -> None:
    settings = secured.settings(password="not-" + secured.password)
    producer = make_producer(settings)
    with pytest.raises(KafkaError):
        await producer.start()
    with contextlib.suppress(Exception):
        await producer.stop()
    # aiokafka only says it could not bootstrap; the kit asks the broker why (what
    # Service start-up logs as service.kafka_login_refused and readiness reports).
    problem = await kafka_security.refused_login(settings)
    assert problem is not None
    assert secured.user in problem and "SaslAuthenticationFailed" in problem
    assert "KAFKA_SASL_PASSWORD" in problem and secured.password not in problem
    assert await kafka_security.refused_login(secured.settings()) is None

    # A service built with these settings says so in its log and its readiness.
    service = create_service(
        ServiceDefinition(
            settings=settings.model_copy(update={"database_url": UNCONNECTED}), title="login"
        )
    )
    connecting = asyncio.create_task(service._connect_broker())
    try:
        await eventually(lambda: _true(service.broker_problem is not None), timeout=60)
        assert (await service.readiness())["broker"] == problem
    finally:
        connecting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await connecting
        await service.db.dispose()


async def test_sasl_ssl_verifies_the_broker_against_the_ca_file(
    secured: Secured, tmp_path: Path
) -> None:
    tls = secured.settings().model_copy(
        update={
            "kafka_bootstrap_servers": secured.broker.tls_bootstrap,
            "kafka_security_protocol": "SASL_SSL",
            "kafka_ssl_ca_file": str(secured.broker.ca_file),
        }
    )
    producer = make_producer(tls)
    await producer.start()
    try:
        sent = await producer.send_and_wait("message.sent", b"over tls", key=b"p1")
        assert sent.topic == "message.sent"
    finally:
        await producer.stop()
    # A broker whose certificate another CA signed is not talked to (no way to turn the
    # verification off), and start-up says why.
    other = tmp_path / "other-ca.crt"
    other.write_bytes(_new_ca()[1].public_bytes(serialization.Encoding.PEM))
    untrusted = tls.model_copy(update={"kafka_ssl_ca_file": str(other)})
    producer = make_producer(untrusted)
    with pytest.raises(KafkaError):
        await producer.start()
    with contextlib.suppress(Exception):
        await producer.stop()
    problem = await kafka_security.refused_login(untrusted)
    assert problem is not None and "KAFKA_SSL_CA_FILE" in problem, problem


async def test_writing_a_topic_the_service_does_not_publish_is_refused(secured: Secured) -> None:
    producer = make_producer(secured.settings())
    await producer.start()
    try:
        with pytest.raises(TopicAuthorizationFailedError):
            await producer.send_and_wait("triage.completed", b"forged", key=b"p1")
    finally:
        await producer.stop()
    # Nor may it read another service's group or a topic it does not consume.
    consumer = AIOKafkaConsumer(
        "appointment.booked",
        bootstrap_servers=secured.broker.sasl_bootstrap,
        group_id="ehr-connector.book_appointment",
        **kafka_security.client_options(secured.settings()),
    )
    with pytest.raises((TopicAuthorizationFailedError, GroupAuthorizationFailedError)):
        await consumer.start()
        await asyncio.wait_for(consumer.getone(), timeout=30)
    with contextlib.suppress(Exception):
        await consumer.stop()


async def _publish_as_super_user(secured: Secured, topic: str, value: bytes) -> None:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=secured.broker.bootstrap_servers, acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(topic, value, key=b"p1")
    finally:
        await producer.stop()
