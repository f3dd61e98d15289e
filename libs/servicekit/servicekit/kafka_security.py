"""How the kit's Kafka clients authenticate: one place for the FastStream broker (consumers),
the outbox relay's producer and the admin clients, from the `KAFKA_SECURITY_PROTOCOL`,
`KAFKA_SASL_*` and `KAFKA_SSL_*` settings.

PLAINTEXT (the default) is the local stack's broker. In Kubernetes the Strimzi listener asks
for SASL/SCRAM over TLS (`SASL_SSL`), each service logging in as its own KafkaUser whose ACLs
allow only the topics it publishes and consumes (deploy/k8s/tools/gen_kafka_users.py). TLS
always verifies the broker's certificate and host name (against `KAFKA_SSL_CA_FILE` or the
system's CAs); there is no setting to turn that off.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

from aiokafka.conn import create_conn
from aiokafka.errors import (
    AuthenticationFailedError,
    IllegalSaslStateError,
    SaslAuthenticationFailed,
    UnsupportedSaslMechanismError,
)
from faststream.kafka.security import parse_security
from faststream.security import (
    BaseSecurity,
    SASLPlaintext,
    SASLScram256,
    SASLScram512,
)

from servicekit.settings import ServiceSettings

_SASL: dict[str, type[SASLPlaintext | SASLScram256 | SASLScram512]] = {
    "PLAIN": SASLPlaintext,
    "SCRAM-SHA-256": SASLScram256,
    "SCRAM-SHA-512": SASLScram512,
}


def ssl_context(settings: ServiceSettings) -> ssl.SSLContext:
    """A verifying TLS context: the CA file (else the system's CAs), the client certificate
    for mutual TLS when one is configured."""
    context = ssl.create_default_context(cafile=settings.kafka_ssl_ca_file or None)
    if settings.kafka_ssl_cert_file:
        context.load_cert_chain(settings.kafka_ssl_cert_file, settings.kafka_ssl_key_file)
    return context


def security(settings: ServiceSettings) -> BaseSecurity | None:
    """FastStream's security object for the settings; None for PLAINTEXT."""
    protocol = settings.kafka_security_protocol
    if protocol == "PLAINTEXT":
        return None
    context = ssl_context(settings) if protocol.endswith("SSL") else None
    if protocol == "SSL":
        return BaseSecurity(ssl_context=context, use_ssl=True)
    sasl = _SASL[settings.kafka_sasl_mechanism]
    return sasl(
        settings.kafka_sasl_username,
        settings.kafka_sasl_password,
        ssl_context=context,
        use_ssl=protocol == "SASL_SSL",
    )


def client_options(settings: ServiceSettings) -> dict[str, Any]:
    """Keyword arguments for an aiokafka producer, consumer or admin client (the same ones
    FastStream derives for its own clients)."""
    return parse_security(security(settings))


_REFUSED_LOGIN = (
    AuthenticationFailedError,
    SaslAuthenticationFailed,
    UnsupportedSaslMechanismError,
    IllegalSaslStateError,
)


def start_up_problem(settings: ServiceSettings, exc: BaseException) -> str | None:
    """What to tell the operator when the broker refused this service's login (wrong user
    or password, a mechanism the listener does not offer) or TLS failed (a certificate the
    CA file does not vouch for), or None for any other failure (the broker is away: retried
    quietly). Names the settings to check, never the password."""
    seen: BaseException | None = exc
    while seen is not None and not isinstance(seen, (*_REFUSED_LOGIN, ssl.SSLError)):
        seen = seen.__cause__ or seen.__context__
    if seen is None:
        return None
    if isinstance(seen, ssl.SSLError):
        return (
            f"Kafka at {settings.kafka_bootstrap_servers}: TLS failed ({seen.reason or seen}). "
            "Check KAFKA_SSL_CA_FILE "
            f"({settings.kafka_ssl_ca_file or 'empty: the system CAs'}) against the "
            "brokers' certificates, and KAFKA_SECURITY_PROTOCOL"
        )
    return (
        f"Kafka at {settings.kafka_bootstrap_servers} refused the login of user "
        f"{settings.kafka_sasl_username!r} ({settings.kafka_sasl_mechanism} over "
        f"{settings.kafka_security_protocol}): {type(seen).__name__}. Check "
        "KAFKA_SASL_USERNAME, KAFKA_SASL_PASSWORD (or KAFKA_SASL_PASSWORD_FILE) and "
        "KAFKA_SASL_MECHANISM against the service's KafkaUser"
    )


async def refused_login(settings: ServiceSettings) -> str | None:
    """Ask the first bootstrap server directly whether it refuses this service's login (or
    its TLS handshake).

    aiokafka's clients only log why a bootstrap failed and raise "Unable to bootstrap": a
    wrong password would look like a broker that is away. One connection of our own gets the
    broker's answer, so start-up can say what is wrong. None when the login is accepted, the
    protocol has no login, or the broker cannot be reached at all."""
    if settings.kafka_security_protocol == "PLAINTEXT":
        return None
    first = settings.kafka_bootstrap_servers.split(",")[0].strip()
    host, _, port = first.rpartition(":")
    try:
        conn = await asyncio.wait_for(
            create_conn(
                host,
                int(port),
                client_id=f"{settings.service_name}-login-check",
                request_timeout_ms=10_000,
                **client_options(settings),
            ),
            timeout=15,
        )
    except Exception as exc:  # what the broker said, or that it is away
        return start_up_problem(settings, exc)
    conn.close()
    return None
