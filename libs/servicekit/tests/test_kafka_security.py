"""The Kafka security settings: what each protocol gives the clients, and the start-up errors
of an incomplete configuration. (Logins and ACLs against a real broker:
tests/deploy/test_kafka_acls_apache.py.)"""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
from pydantic import ValidationError

from servicekit import kafka_security
from servicekit.settings import ServiceSettings


def test_plaintext_is_the_default_and_adds_nothing() -> None:
    settings = ServiceSettings()
    assert settings.kafka_security_protocol == "PLAINTEXT"
    assert kafka_security.security(settings) is None
    assert kafka_security.client_options(settings) == {}


def test_sasl_ssl_scram_logs_in_over_a_verifying_tls_context() -> None:
    settings = ServiceSettings(
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_username="records-kafka",
        kafka_sasl_password="p" * 32,
    )
    options = kafka_security.client_options(settings)
    assert options["security_protocol"] == "SASL_SSL"
    assert options["sasl_mechanism"] == "SCRAM-SHA-512"
    assert options["sasl_plain_username"] == "records-kafka"
    context = options["ssl_context"]
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "PLAIN"])
def test_sasl_plaintext_with_other_mechanisms(mechanism: str) -> None:
    settings = ServiceSettings(
        kafka_security_protocol="SASL_PLAINTEXT",
        kafka_sasl_mechanism=mechanism,
        kafka_sasl_username="u",
        kafka_sasl_password="p",
    )
    options = kafka_security.client_options(settings)
    assert options["security_protocol"] == "SASL_PLAINTEXT"
    assert options["sasl_mechanism"] == mechanism
    assert options["ssl_context"] is None


def test_ssl_alone_is_tls_without_a_login() -> None:
    options = kafka_security.client_options(ServiceSettings(kafka_security_protocol="SSL"))
    assert options["security_protocol"] == "SSL"
    assert isinstance(options["ssl_context"], ssl.SSLContext)
    assert "sasl_mechanism" not in options


def test_credentials_come_from_mounted_files(tmp_path: Path) -> None:
    (tmp_path / "user").write_text("messaging-kafka\n")
    (tmp_path / "password").write_text("from-the-secret\n")
    settings = ServiceSettings(
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_username="ignored",
        kafka_sasl_username_file=str(tmp_path / "user"),
        kafka_sasl_password_file=str(tmp_path / "password"),
    )
    assert settings.kafka_sasl_username == "messaging-kafka"
    assert settings.kafka_sasl_password == "from-the-secret"


def test_sasl_without_credentials_refuses_to_start() -> None:
    with pytest.raises(ValidationError, match="needs KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD"):
        ServiceSettings(kafka_security_protocol="SASL_SSL", kafka_sasl_username="u")


def test_a_missing_password_file_refuses_to_start(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="KAFKA_SASL_PASSWORD_FILE"):
        ServiceSettings(
            kafka_security_protocol="SASL_SSL",
            kafka_sasl_username="u",
            kafka_sasl_password_file=str(tmp_path / "absent"),
        )


def test_an_unknown_protocol_or_mechanism_is_refused() -> None:
    with pytest.raises(ValidationError):
        ServiceSettings(kafka_security_protocol="TLS")  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        ServiceSettings(kafka_sasl_mechanism="GSSAPI")  # type: ignore[arg-type]


def test_a_client_certificate_needs_its_key() -> None:
    with pytest.raises(ValidationError, match="go together"):
        ServiceSettings(kafka_security_protocol="SSL", kafka_ssl_cert_file="/tmp/c.pem")


def test_a_missing_ca_file_fails_when_the_context_is_made(tmp_path: Path) -> None:
    settings = ServiceSettings(
        kafka_security_protocol="SSL", kafka_ssl_ca_file=str(tmp_path / "absent.pem")
    )
    with pytest.raises(FileNotFoundError):
        kafka_security.ssl_context(settings)


def test_a_settings_error_does_not_echo_the_password() -> None:
    # Pydantic prints the inputs of a failed model (shortened only when long).
    with pytest.raises(ValidationError) as raised:
        ServiceSettings(kafka_security_protocol="SASL_SSL", kafka_sasl_password="pw-12345")
    assert "needs KAFKA_SASL_USERNAME" in str(raised.value)
    assert "pw-12345" not in str(raised.value)
