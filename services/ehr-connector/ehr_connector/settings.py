"""Settings of the ehr-connector service (environment variables, local defaults)."""

from __future__ import annotations

from pydantic import Field

from servicekit.settings import ServiceSettings

# Least privilege for what the connector does: read and search everything it imports,
# write only the types the outbound side writes, manage its own Subscriptions.
DEFAULT_EHR_SCOPE = " ".join(
    (
        "system/*.rs",
        "system/Appointment.cu",
        "system/Slot.u",
        "system/QuestionnaireResponse.c",
        "system/Communication.c",
        "system/Task.c",
        "system/Subscription.cu",
    )
)


class Settings(ServiceSettings):
    """The only service that speaks FHIR to the EHR."""

    service_name: str = "ehr-connector"
    http_port: int = 8005

    # -- the EHR (FHIR R4 server) and how to reach it -------------------------------------
    ehr_base_url: str = Field(
        default="http://127.0.0.1:8090/fhir", description="FHIR base URL of the EHR"
    )
    ehr_verify_tls: bool = Field(default=True, description="Verify the EHR's TLS certificate")
    ehr_ca_file: str = Field(default="", description="CA bundle for the EHR; empty = system CAs")
    ehr_connect_timeout_s: float = 3.0
    ehr_read_timeout_s: float = 15.0
    ehr_write_timeout_s: float = 15.0
    ehr_pool_timeout_s: float = 5.0
    ehr_max_connections: int = 20
    ehr_max_keepalive_connections: int = 10

    # -- SMART Backend Services -----------------------------------------------------------
    ehr_client_id: str = "portal-connector"
    ehr_private_key_file: str = Field(
        default="",
        description=(
            "PEM or private JWK (JSON) of the client's signing key (RSA or EC P-384). Empty "
            "outside prod: the sandbox's generated dev client key is used"
        ),
    )
    ehr_key_id: str = Field(default="", description="kid of the signing key in the EHR's JWKS")
    ehr_token_url: str = Field(
        default="", description="Token endpoint; empty = from .well-known/smart-configuration"
    )
    ehr_scope: str = Field(default=DEFAULT_EHR_SCOPE, description="SMART system scopes to ask")
    ehr_token_refresh_margin_s: float = Field(
        default=30.0, description="Refresh a cached token this long before it expires"
    )
    ehr_assertion_lifetime_s: int = Field(
        default=240, description="exp of the client assertion (SMART allows at most 300 s)"
    )

    # -- retries and the circuit breaker --------------------------------------------------
    ehr_retry_attempts: int = Field(default=4, description="Tries per EHR call (1 = no retry)")
    ehr_retry_base_s: float = Field(default=0.2, description="First back-off (full jitter)")
    ehr_retry_max_s: float = Field(default=3.0, description="Longest back-off between tries")
    ehr_retry_after_max_s: float = Field(
        default=5.0,
        description=(
            "Longest Retry-After honoured inside one call; longer waits happen in Kafka "
            "(the call gives up as 'EHR unavailable' and the event is retried later)"
        ),
    )
    ehr_breaker_failure_threshold: int = Field(
        default=5, description="Consecutive failed calls that open the circuit"
    )
    ehr_breaker_reset_s: float = Field(
        default=5.0, description="Cool-down before an open circuit lets one trial call through"
    )

    # -- outbound mapping -----------------------------------------------------------------
    ehr_default_care_team_id: str = Field(
        default="care-team-primary",
        description="CareTeam addressed when a message or triage names no known pool",
    )
    ehr_care_teams_by_pool: dict[str, str] = Field(
        default_factory=dict,
        description='Care-team pool → CareTeam id, JSON (e.g. {"nurses": "care-team-nurses"})',
    )
    ehr_triage_questionnaire: str = Field(
        default="http://portal.example.org/fhir/Questionnaire/triage",
        description="Canonical of the questionnaire a triage outcome is filed against",
    )
