"""Settings of the ehr-connector service (environment variables, local defaults).

Grouped by the part of the connector that reads them (`EhrSettings`, `OutboundSettings`,
`InboundSettings`, `BackfillSettings`, `CanarySettings`, `SlotSyncSettings`), combined into
the one `Settings` the service is built with: environment names stay flat (`EHR_BASE_URL`,
`BACKFILL_PAGE_SIZE`), as the deployment documents them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings

from servicekit.crypto import EncryptionSettings
from servicekit.settings import ServiceSettings

DEFAULT_RECIPIENTS_FILE = Path(__file__).resolve().parent / "outbound" / "recipients.yaml"
# Least privilege for what the connector does: read and search everything it imports,
# write only the types the outbound side writes, manage its own Subscriptions.
DEFAULT_EHR_SCOPE = " ".join(
    (
        "system/*.rs",
        "system/Appointment.cu",
        "system/Slot.u",
        "system/QuestionnaireResponse.cu",  # intake amendments update the filed one
        "system/Communication.c",
        "system/Task.c",
        "system/Consent.cu",  # caregiver grants, made inactive when revoked
        "system/Subscription.cu",
        # The synthetic canary (inbound) files a lab result for the `canary` patient.
        "system/Observation.c",
        "system/DiagnosticReport.c",
    )
)
# The connector's topic per focus type (the EHR sandbox's SubscriptionTopic canonicals).
_TOPIC_BASE = "http://portal.example.org/fhir/SubscriptionTopic/"
DEFAULT_INBOUND_TOPICS = {
    "DiagnosticReport": _TOPIC_BASE + "diagnosticreport-final",
    "MedicationRequest": _TOPIC_BASE + "medicationrequest-change",
    "Communication": _TOPIC_BASE + "communication-patient",
    "Appointment": _TOPIC_BASE + "appointment-status",
    "Slot": _TOPIC_BASE + "slot-change",
}

# Classic (criteria-based) R4 Subscriptions mapped to the same events, for servers without
# topics: the EHR only says "something matching changed"; the connector searches.
DEFAULT_INBOUND_CRITERIA = {
    "DiagnosticReport": "DiagnosticReport?status=final,amended,corrected,appended",
    "MedicationRequest": "MedicationRequest?status=active,on-hold,cancelled,completed,stopped",
    "Communication": "Communication?status=completed,in-progress",
    "Appointment": "Appointment?status=booked,cancelled,noshow,fulfilled,arrived,checked-in",
    "Slot": "Slot?status=free,busy,busy-unavailable,busy-tentative",
}


class EhrSettings(BaseSettings):
    """The EHR (a FHIR R4 server): where it is, what it supports, how the client signs in,
    retries and breaks the circuit."""

    # -- the EHR (FHIR R4 server) and how to reach it -------------------------------------
    ehr_base_url: str = Field(
        default="http://127.0.0.1:8090/fhir", description="FHIR base URL of the EHR"
    )
    ehr_verify_tls: bool = Field(default=True, description="Verify the EHR's TLS certificate")
    ehr_ca_file: str = Field(default="", description="CA bundle for the EHR; empty = system CAs")
    ehr_connect_timeout_s: float = Field(default=3.0, description="TCP/TLS connect timeout")
    ehr_read_timeout_s: float = Field(default=15.0, description="Wait for the EHR's answer")
    ehr_write_timeout_s: float = Field(default=15.0, description="Send a request body")
    ehr_pool_timeout_s: float = Field(default=5.0, description="Wait for a pooled connection")
    ehr_max_connections: int = Field(default=20, description="Connection pool size")
    ehr_max_keepalive_connections: int = Field(default=10, description="Idle connections kept")
    ehr_writes_at_once: int = Field(
        default=2,
        ge=1,
        description=(
            "Writes (POST/PUT/PATCH/DELETE) in flight to the EHR at once; more wait their "
            "turn. More would queue inside the EHR, not go faster, and would all be in "
            "flight when a rate limit's first 429 comes"
        ),
    )

    # -- the EHR's profile: what it supports (detected from /metadata, overridable) ---------
    ehr_auth_mode: Literal["smart-backend", "static-bearer", "none"] = Field(
        default="smart-backend",
        description=(
            "How the connector authenticates to the EHR: SMART Backend Services, a static "
            "bearer token (EHR_STATIC_TOKEN), or none (local development only; refused in prod)"
        ),
    )
    ehr_static_token: str = Field(default="", description="Token for ehr_auth_mode=static-bearer")
    ehr_subscription_style: Literal["auto", "backport-topic", "criteria"] = Field(
        default="auto",
        description=(
            "Topic-based Subscriptions (R5 Backport IG) or classic R4 criteria Subscriptions; "
            "auto = topic-based when the CapabilityStatement advertises the Backport IG"
        ),
    )
    ehr_supports_status: bool | None = Field(
        default=None, description="Subscription/$status exists; unset = from CapabilityStatement"
    )
    ehr_supports_events: bool | None = Field(
        default=None, description="Subscription/$events exists; unset = from CapabilityStatement"
    )
    ehr_sends_heartbeats: bool | None = Field(
        default=None,
        description="The EHR sends heartbeat notifications; unset = yes when it advertises "
        "the Backport IG",
    )
    ehr_sends_handshake: bool | None = Field(
        default=None,
        description="The EHR sends a handshake on activation; unset = yes when it advertises "
        "the Backport IG",
    )

    # -- SMART Backend Services -----------------------------------------------------------
    ehr_client_id: str = Field(default="portal-connector", description="SMART client id")
    ehr_private_key_file: str = Field(
        default="",
        description=(
            "PEM or private JWK (JSON) of the client's signing key (RSA or EC P-384). Empty "
            "outside prod: the sandbox's generated dev client key is used"
        ),
        json_schema_extra={"secret": "file"},
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
    ehr_throttle_serial_s: float = Field(
        default=10.0,
        ge=0.0,
        description=(
            "After a 429, requests of the kind it refused (writes; after a refused read, all) "
            "go one at a time for this long (beyond its Retry-After), so none is in flight "
            "when the next 429 comes and every Retry-After is honoured"
        ),
    )
    ehr_breaker_failure_threshold: int = Field(
        default=5, description="Consecutive failed calls that open the circuit"
    )
    ehr_breaker_reset_s: float = Field(
        default=5.0, description="Cool-down before an open circuit lets one trial call through"
    )


class OutboundSettings(BaseSettings):
    """Writing what patients do to the EHR."""

    # -- outbound mapping -----------------------------------------------------------------
    ehr_recipients_file: Path = Field(
        default=DEFAULT_RECIPIENTS_FILE,
        description="Care-team pool → EHR recipient (CareTeam/PractitionerRole/Group), YAML",
    )
    ehr_verify_recipients: bool = Field(
        default=True,
        description="Read every recipient from the EHR at start-up; an unknown one stops it",
    )
    ehr_care_teams_by_pool: dict[str, str] = Field(
        default_factory=dict,
        description="Overrides of the recipients file: pool → CareTeam id, JSON "
        '(e.g. {"nurses": "care-team-nurses"})',
    )
    ehr_triage_questionnaire: str = Field(
        default="http://portal.example.org/fhir/Questionnaire/triage",
        description="Canonical of the questionnaire a triage outcome is filed against",
    )
    outbound_link_wait_s: float = Field(
        default=30.0,
        ge=0,
        description="How long a patient's message or symptom check waits for the patient's "
        "patient.linked (another topic) before it is retried and, at last, dead-lettered",
    )
    outbound_booking_wait_s: float = Field(
        default=60.0,
        gt=0,
        description="How long an intake, cancel or reschedule waits for its appointment's "
        "booking (another topic) before it is dead-lettered saying so",
    )


class InboundSettings(BaseSettings):
    """Subscriptions and their notifications: from changes in the EHR to events."""

    # -- inbound: Subscriptions and notifications -----------------------------------------
    inbound_enabled: bool = Field(
        default=True,
        description="Manage the EHR Subscriptions and watch their heartbeats (the webhook "
        "answers either way)",
    )
    inbound_webhook_url: str = Field(
        default="http://127.0.0.1:8005/fhir/notifications",
        description="Public URL of POST /fhir/notifications, as the EHR reaches it",
    )
    inbound_webhook_token: str = Field(
        default="dev-webhook-token",
        description="Shared secret the EHR sends as `Authorization: Bearer` (channel.header)",
        json_schema_extra={"secret": True},
    )
    inbound_require_signature: bool = Field(
        default=True,
        description="Refuse notifications without a valid X-Signature (with "
        "inbound_notification_auth=signature; false there means channel-header)",
    )
    inbound_notification_auth: Literal["signature", "channel-header", "mtls"] = Field(
        default="signature",
        description=(
            "What authenticates a notification besides the channel token: a JWS signature, "
            "the channel header secret alone, or mutual TLS verified by the TLS terminator "
            "in front of the connector (which sets inbound_mtls_header)"
        ),
    )
    inbound_mtls_header: str = Field(
        default="X-Client-Verify",
        description="Header the TLS terminator sets to SUCCESS for a verified client cert",
    )
    inbound_mtls_subject_header: str = Field(
        default="X-Client-Subject", description="Header carrying the verified client's subject"
    )
    inbound_mtls_subject: str = Field(
        default="", description="Required client certificate subject; empty = any verified"
    )
    inbound_filter_criteria: dict[str, str] = Field(
        default_factory=dict,
        description=(
            "backport-filter-criteria per focus type, JSON (e.g. "
            '{"DiagnosticReport": "DiagnosticReport?status=final"}); unset types get '
            "<Type>? (server-wide)"
        ),
    )
    inbound_criteria: dict[str, str] = Field(
        default_factory=lambda: dict(DEFAULT_INBOUND_CRITERIA),
        description="Classic R4 Subscription criteria per focus type (criteria style), JSON",
    )
    inbound_reconcile_interval_s: float = Field(
        default=300.0,
        gt=0,
        description=(
            "With no heartbeats from the EHR: how often each Subscription's resource type is "
            "searched by _lastUpdated for changes no notification brought"
        ),
    )
    inbound_jwks_url: str = Field(
        default="", description="The EHR's JWKS; empty = jwks_uri of its SMART configuration"
    )
    inbound_signature_max_age_s: float = Field(
        default=300.0, description="Accepted distance of a signature's iat from now"
    )
    inbound_topics: dict[str, str] = Field(
        default_factory=lambda: dict(DEFAULT_INBOUND_TOPICS),
        description="Focus resource type → SubscriptionTopic canonical, JSON",
    )
    inbound_payload: Literal["id-only", "full-resource"] = Field(
        default="id-only", description="Payload content the Subscriptions ask for"
    )
    inbound_heartbeat_period_s: int = Field(default=60, ge=1)
    inbound_heartbeat_missed_factor: float = Field(
        default=3.0, description="Silence of this many heartbeat periods is a missed heartbeat"
    )
    inbound_monitor_interval_s: float = Field(
        default=10.0, description="How often heartbeats are checked"
    )
    inbound_notification_timeout_s: int = Field(
        default=30, description="backport-timeout: how long the EHR waits for our answer"
    )
    inbound_max_count: int = Field(
        default=20, ge=1, description="backport-max-count: events per notification"
    )
    inbound_ensure_interval_s: float = Field(
        default=300.0, description="How often the Subscriptions are checked and repaired"
    )
    inbound_gap_grace_s: float = Field(
        default=2.0, description="Wait before recovering a gap (a reordered notification fills it)"
    )
    inbound_search_margin_s: float = Field(
        default=60.0, description="_lastUpdated search recovery looks back this much further"
    )
    inbound_echo_recheck_s: float = Field(
        default=2.0,
        description="How long a tagged version of a resource we wrote waits for our write log",
    )
    inbound_read_concurrency: int = Field(default=8, ge=1, description="Parallel EHR reads")
    inbound_reference_cache_s: float = Field(
        default=300.0, description="Cache of Practitioners, Schedules... read for mappings"
    )
    inbound_live_priority: int = Field(
        default=10, description="Outbox priority of live notifications' events"
    )
    inbound_retention_hours: float = Field(
        default=168.0, description="How long processed resource versions are remembered"
    )


class BackfillSettings(BaseSettings):
    """Importing a newly linked patient's history."""

    # -- inbound: back-fill -------------------------------------------------------------
    backfill_page_size: int = Field(default=50, ge=1, le=500, description="Entries per batch")
    backfill_page_interval_s: float = Field(
        default=0.0, description="Pause between pages (spares the EHR during big imports)"
    )
    backfill_priority: int = Field(
        default=-10, description="Outbox priority of record.imported (below live events)"
    )
    backfill_share_under_live: float = Field(
        default=0.5,
        gt=0,
        le=1,
        description=(
            "While live event notifications arrive: the share of the time a back-fill works "
            "(it rests between pages for the rest; 1 = never yields)"
        ),
    )
    backfill_live_window_s: float = Field(
        default=2.0, gt=0, description="A live notification this recent counts as live traffic"
    )
    backfill_lease_s: float = Field(
        default=30.0, description="A worker holds a job this long per page; then others may"
    )
    backfill_poll_interval_s: float = Field(default=1.0, description="Look for new jobs")
    backfill_retry_s: float = Field(default=2.0, description="First wait after a failed page")
    backfill_max_page_failures: int = Field(
        default=5, description="Refused pages (4xx) in a row before the job fails"
    )


class CanarySettings(BaseSettings):
    """The synthetic lab result that measures the inbound path end to end."""

    # -- inbound: synthetic canary ----------------------------------------------------------
    canary_enabled: bool = Field(
        default=True, description="Write a synthetic lab result periodically and time it"
    )
    canary_interval_s: float = Field(default=300.0, description="Time between canary runs")
    canary_first_run_s: float = Field(
        default=30.0,
        description="Delay of the first run after start-up (the histogram is empty until then)",
    )
    canary_timeout_s: float = Field(
        default=60.0, description="A run not published within this long is a failure"
    )
    canary_patient_fhir_id: str = Field(default="canary", description="EHR Patient of the canary")
    canary_patient_id: str = Field(default="canary", description="Its portal patient id")


class SlotSyncSettings(BaseSettings):
    """Publishing the EHR's upcoming slots for scheduling's cache."""

    # -- slots ------------------------------------------------------------------------------
    slot_sync_enabled: bool = Field(
        default=True, description="Publish the EHR's upcoming slots on start-up and periodically"
    )
    slot_sync_days: int = Field(default=30, ge=1, le=365, description="How far ahead to sync")
    slot_sync_interval_s: float = Field(default=900.0, gt=0, description="Time between passes")
    slot_sync_page_size: int = Field(default=200, ge=1, le=1000, description="Slots per page")


class Settings(
    ServiceSettings,
    EncryptionSettings,
    EhrSettings,
    OutboundSettings,
    InboundSettings,
    BackfillSettings,
    CanarySettings,
    SlotSyncSettings,
):
    """The only service that speaks FHIR to the EHR."""

    service_name: str = "ehr-connector"
    http_port: int = 8005
