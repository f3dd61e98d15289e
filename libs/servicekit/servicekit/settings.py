"""Settings shared by every service; each service subclasses them with its own prefix."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Self

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServiceSettings(BaseSettings):
    """Configuration every service has. Defaults run locally with nothing installed.

    Each field is read from the environment by its upper-case name (`DATABASE_URL`); each
    service runs in its own process, so the local supervisor and the k8s manifests give
    every process its own values.
    """

    # hide_input_in_errors: a validation error would otherwise print every input value
    # (passwords, keys) into the start-up log.
    model_config = SettingsConfigDict(
        env_prefix="", extra="ignore", populate_by_name=True, hide_input_in_errors=True
    )

    service_name: str = "service"
    http_host: str = "127.0.0.1"
    http_port: int = 8000
    environment: str = Field(default="dev", description="dev, test or prod")
    database_url: str = Field(
        default="",
        description=(
            "PostgreSQL URL (postgresql+asyncpg://...); `make up` and the tests start an "
            "embedded server and set it"
        ),
    )
    database_echo: bool = False
    database_sslmode: Literal["disable", "require", "verify-ca", "verify-full"] = Field(
        default="disable",
        description="TLS to PostgreSQL (servicekit.db_tls): verify-full in Kubernetes (the "
        "server's certificate signed by DATABASE_SSLROOTCERT and issued for the URL's host), "
        "require encrypts (checking the CA only when DATABASE_SSLROOTCERT is set); disable: the "
        "local stack's unix "
        "socket. libpq's sslmode= in DATABASE_URL works too",
    )
    database_sslrootcert: str = Field(
        default="",
        description="CA file (PEM) the database server's certificate is verified against, "
        "needed by verify-ca and verify-full (`system`: the system's CAs)",
    )
    database_sslcert: str = Field(
        default="", description="Client certificate (PEM) for the database; empty: none"
    )
    database_sslkey: str = Field(default="", description="Private key (PEM) of DATABASE_SSLCERT")
    kafka_bootstrap_servers: str = "localhost:9092"
    kafka_enable_idempotence: bool = Field(
        default=False,
        description="On for Apache Kafka; Tansu rejects idempotent producers",
    )
    kafka_fetch_max_wait_ms: int = Field(
        default=500,
        ge=1,
        le=30_000,
        description="Longest a consumer's fetch waits at the broker for records. Apache Kafka "
        "answers a waiting fetch as soon as a record arrives; Tansu only when this expires, so "
        "there it bounds each hop's added latency, at the cost of a fetch per consumer this "
        "often when idle (20 ms cost the local stack over a core)",
    )
    kafka_interactive_fetch_max_wait_ms: int | None = Field(
        default=None,
        ge=1,
        le=30_000,
        description="The fetch wait of the consumers a patient waits on (their stream, their "
        "lists, their booking reaching the EHR; `interactive` subscriptions); unset: "
        "KAFKA_FETCH_MAX_WAIT_MS. The local stack sets 50 on Tansu: a short wait there only "
        "where it is felt",
    )
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        default="PLAINTEXT",
        description="How every Kafka client of the kit connects (servicekit.kafka_security): "
        "SASL_SSL with SCRAM in Kubernetes, PLAINTEXT on the local stack",
    )
    kafka_sasl_mechanism: Literal["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"] = Field(
        default="SCRAM-SHA-512", description="SASL mechanism (with SASL_PLAINTEXT or SASL_SSL)"
    )
    kafka_sasl_username: str = Field(default="", description="SASL user (the KafkaUser's name)")
    kafka_sasl_username_file: str = Field(
        default="", description="File holding KAFKA_SASL_USERNAME; wins over the variable"
    )
    kafka_sasl_password: str = Field(default="", description="SASL password")
    kafka_sasl_password_file: str = Field(
        default="",
        description="File holding KAFKA_SASL_PASSWORD (a mounted Secret); wins over the variable",
    )
    kafka_ssl_ca_file: str = Field(
        default="",
        description="CA bundle (PEM) the brokers' certificates are verified against, with SSL or "
        "SASL_SSL; empty: the system's CAs. Verification is never off",
    )
    kafka_ssl_cert_file: str = Field(
        default="", description="Client certificate (PEM) for mutual TLS; empty: none"
    )
    kafka_ssl_key_file: str = Field(
        default="", description="Private key (PEM) of KAFKA_SSL_CERT_FILE"
    )
    topic_prefix: str = Field(default="", description="Prefixed to every topic (test isolation)")
    group_prefix: str = Field(default="", description="Prefixed to every consumer group id")
    log_level: str = "INFO"
    log_format: str = Field(default="json", description="json, or console for humans")
    otlp_endpoint: str = Field(default="", description="OTLP/HTTP traces endpoint; empty = off")
    outbox_poll_interval_s: float = Field(
        default=0.2,
        gt=0,
        description="How soon the outbox relay looks again after finding nothing (its own "
        "commits wake it at once; the poll finds rows another process left)",
    )
    outbox_idle_poll_max_s: float = Field(
        default=1.0,
        gt=0,
        description="The relay's poll doubles from OUTBOX_POLL_INTERVAL_S up to this while "
        "it keeps finding nothing, and starts again from it once it publishes",
    )
    outbox_batch_size: int = 200
    outbox_retention_hours: float = 72.0
    inbox_retention_hours: float = Field(
        default=168.0,
        description=(
            "How long a consumer remembers the events it handled; keep it above "
            "OUTBOX_RETENTION_HOURS, since a replay may bring an event that old again"
        ),
    )
    idempotency_retention_hours: float = Field(
        default=48.0,
        description=(
            "How long the answers of idempotent commands are kept for retries with the same "
            "Idempotency-Key (clients retry within minutes)"
        ),
    )
    outbox_loss_check_interval_s: float = Field(
        default=5.0,
        description=(
            "How often the relay asks the broker's cluster id, to publish again what a "
            "broker that came back empty had acknowledged (0: never)"
        ),
    )
    outbox_publish_timeout_s: float = Field(
        default=30.0, description="How long a publish may wait for the broker before retrying"
    )
    consumer_max_attempts: int = 5
    consumer_retry_base_s: float = 0.1
    consumer_retry_max_s: float = 5.0
    consumer_batch_max_records: int = Field(
        default=500,
        ge=1,
        description="Most records of one partition a consumer handles in one go, in one "
        "database transaction; the partitions' batches run side by side (1: a transaction "
        "per message)",
    )
    consumer_effect_first_keys_at_once: int = Field(
        default=8,
        ge=1,
        description="Keys (patients) of one partition whose effect-first handlers call out "
        "at the same time; each key's events still go one after another (1: a partition's "
        "events one at a time)",
    )
    ops_token: str = Field(
        default="dev-ops-token",
        description="Bearer token for /ops (refused outside dev/test: servicekit.secrets)",
        json_schema_extra={"secret": True},
    )
    service_token_key: str = Field(
        default="dev-service-token-key-not-for-production",
        description="Key that signs and verifies the tokens services present to each other "
        "(one per environment, the same for every service; refused outside dev/test when it is "
        "the development default)",
        json_schema_extra={"secret": True},
    )
    service_token_key_file: str = Field(
        default="",
        description="File holding SERVICE_TOKEN_KEY (a mounted Secret); wins over the variable",
    )
    service_token_ttl_s: float = Field(
        default=60.0, ge=5, le=3600, description="Lifetime of a service token"
    )
    max_body_bytes: int = Field(
        default=1_048_576, ge=1, description="Largest request body (413 beyond, while streaming)"
    )
    max_json_depth: int = Field(
        default=32, ge=1, description="Deepest JSON nesting of a request body (400 beyond)"
    )
    auto_migrate: bool = Field(default=True, description="Run migrations on start-up")
    relay_enabled: bool = True
    kafka_session_timeout_ms: int = Field(
        default=6000,
        ge=1000,
        description="Consumer group session timeout. Tansu completes a group's first join "
        "after half of it (aiokafka's 10 s default meant 5 s per group); Apache Kafka refuses "
        "less than its group.min.session.timeout.ms (6000 by default)",
    )
    kafka_heartbeat_interval_ms: int = Field(
        default=1000, ge=50, description="Consumer heartbeats (well under the session timeout)"
    )
    metrics_port: int = Field(
        default=0,
        ge=0,
        le=65535,
        description="Serve /metrics on this port only, and no longer on HTTP_PORT "
        "(servicekit.metrics_server); 0: /metrics on HTTP_PORT (the local stack)",
    )
    metrics_interval_s: float = Field(
        default=5.0, gt=0, description="How often gauges read from the database/broker refresh"
    )
    consumers_enabled: bool = True

    @model_validator(mode="after")
    def _no_development_secrets(self) -> Self:
        # Outside dev/test a service must not start with a shipped development secret.
        from servicekit.secrets import refuse_development_secrets

        self._read_secret_files()
        refuse_development_secrets(self, self.environment, self.service_name)
        return self

    @model_validator(mode="after")
    def _kafka_credentials(self) -> Self:
        # Read the mounted files once, here, and fail start-up with what is missing rather
        # than on the first connection with an authentication error.
        for name in ("kafka_sasl_username", "kafka_sasl_password"):
            path = getattr(self, f"{name}_file")
            if not path:
                continue
            try:
                setattr(self, name, Path(path).read_text().strip())
            except OSError as exc:
                raise ValueError(
                    f"{name.upper()}_FILE {path} cannot be read: {exc.strerror}"
                ) from exc
        protocol = self.kafka_security_protocol
        if protocol.startswith("SASL_") and not (
            self.kafka_sasl_username and self.kafka_sasl_password
        ):
            raise ValueError(
                f"KAFKA_SECURITY_PROTOCOL={protocol} needs KAFKA_SASL_USERNAME and "
                "KAFKA_SASL_PASSWORD (or their _FILE variants)"
            )
        if bool(self.kafka_ssl_cert_file) != bool(self.kafka_ssl_key_file):
            raise ValueError("KAFKA_SSL_CERT_FILE and KAFKA_SSL_KEY_FILE go together")
        return self

    @model_validator(mode="after")
    def _database_tls(self) -> Self:
        # A missing or unreadable CA file fails start-up here, naming the setting, rather
        # than on the first connection.
        from servicekit.db_tls import DatabaseTLS

        DatabaseTLS.of(self).check()
        return self

    def _read_secret_files(self) -> None:
        """A secret `<name>` with a non-empty `<name>_file` setting is read from that file (a
        mounted Secret), once, here: a missing file fails start-up."""
        fields = type(self).model_fields
        for name, field in fields.items():
            extra = field.json_schema_extra
            if not (isinstance(extra, dict) and extra.get("secret") is True):
                continue
            path = getattr(self, f"{name}_file", "") if f"{name}_file" in fields else ""
            if not path:
                continue
            try:
                setattr(self, name, Path(path).read_text().strip())
            except OSError as exc:
                raise ValueError(
                    f"{name.upper()}_FILE {path} cannot be read: {exc.strerror}"
                ) from exc

    def resolved_database_url(self) -> str:
        """The database URL; a clear error when none is configured."""
        if not self.database_url:
            raise ValueError(
                f"{self.service_name}: DATABASE_URL is not set. Run the stack with `make up` "
                "(it starts an embedded PostgreSQL and gives each service its database), or "
                "set DATABASE_URL=postgresql+asyncpg://user:password@host:port/database"
            )
        return self.database_url

    def topic(self, event_type: str) -> str:
        """The Kafka topic name for an event type, with the isolation prefix."""
        return f"{self.topic_prefix}{event_type}"

    def fetch_max_wait_ms(self, *, interactive: bool) -> int:
        """How long a consumer's fetch waits at the broker: interactive ones may wait less."""
        if interactive and self.kafka_interactive_fetch_max_wait_ms is not None:
            return self.kafka_interactive_fetch_max_wait_ms
        return self.kafka_fetch_max_wait_ms

    def group_id(self, consumer: str) -> str:
        """The consumer group id for one of this service's consumers."""
        return f"{self.group_prefix}{self.service_name}.{consumer}"
