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

import ssl
from typing import Any

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
