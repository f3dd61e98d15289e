"""Settings of the gateway (environment variables, local defaults)."""

from __future__ import annotations

from pydantic import Field

from servicekit.crypto import EncryptionSettings
from servicekit.settings import ServiceSettings


class Settings(ServiceSettings, EncryptionSettings):
    """Patient API, real-time stream and portal page."""

    service_name: str = "gateway"
    http_port: int = 8000
    oidc_issuer: str = Field(
        default="http://127.0.0.1:8090", description="Issuer of patient tokens (iss)"
    )
    oidc_audience: str = Field(default="portal", description="Expected aud of patient tokens")
    oidc_jwks_url: str = Field(
        default="", description="JWKS URL; empty = discovered from the issuer's metadata"
    )
    oidc_client_id: str = Field(default="portal", description="The portal page's OIDC client")
    jwks_refresh_s: float = Field(default=300.0, description="Re-fetch keys at most this often")
    jwks_min_refresh_s: float = Field(
        default=60.0,
        ge=0,
        description="Cool-down between re-fetches for an unknown kid, and after a failed one",
    )
    jwks_stale_wait_s: float = Field(
        default=0.5,
        ge=0,
        description="How long requests wait for the refresh of stale keys (from its start) "
        "before the known keys serve while it goes on",
    )
    ehr_fhir_url: str = Field(
        default="",
        description="FHIR base of the EHR that asserts a patient exists before linking; "
        "empty = `<oidc_issuer>/fhir` (the sandbox's layout)",
    )
    ehr_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="Per-call timeout when the gateway asks the EHR itself (the patient at a "
        "first visit, the profile): an EHR is slower than our own services",
    )
    records_url: str = "http://127.0.0.1:8001"
    scheduling_url: str = "http://127.0.0.1:8002"
    messaging_url: str = "http://127.0.0.1:8003"
    triage_url: str = "http://127.0.0.1:8004"
    upstream_timeout_s: float = Field(default=2.0, description="Per-call timeout to services")
    summary_part_timeout_s: float = Field(
        default=1.0,
        gt=0,
        description="The summary leaves out, with a warning, a part whose service has not "
        "answered within this long: one slow service does not hold the whole screen",
    )
    upstream_max_connections: int = Field(
        default=16,
        ge=1,
        description="Concurrent calls to each owning service (and to the EHR): a pool of "
        "connections per origin; more calls wait for a free one up to UPSTREAM_TIMEOUT_S",
    )
    sse_keepalive_s: float = Field(default=15.0, description="Comment line every N seconds")
    rate_limit_ip_per_s: float = Field(
        default=50.0, ge=0, description="Requests per second per client IP on /v1 (0 = off)"
    )
    rate_limit_ip_burst: int = Field(default=500, ge=1, description="Burst per client IP")
    rate_limit_token_per_s: float = Field(
        default=10.0, ge=0, description="Requests per second per bearer token on /v1 (0 = off)"
    )
    rate_limit_token_burst: int = Field(default=100, ge=1, description="Burst per token")
    audit_key: str = Field(
        default="dev-audit-key-not-for-production",
        description="HMAC key of the access log's hash chain and of its checkpoints "
        "(refused outside dev/test when it is the development default)",
        json_schema_extra={"secret": True},
    )
    audit_key_file: str = Field(default="", description="File holding AUDIT_KEY (wins)")
    audit_checkpoint_dir: str = Field(
        default="",
        description="Directory of the access log's signed checkpoints, apart from the "
        "database (a volume its operators cannot rewrite): each gateway appends to "
        "`<hostname>.jsonl` and verifies against every file; empty = no anchors",
    )
    audit_verify_interval_s: float = Field(
        default=300.0,
        ge=0,
        description="How often the gateway anchors and verifies the access log (0 = never)",
    )
    audit_source_id: str = Field(
        default="urn:patient-portal:gateway",
        description="The gateway's URI in exported AuditEvents (source.observer and the "
        "server agent; GET /ops/audit/export)",
    )
    audit_queue_max: int = Field(
        default=1000,
        ge=1,
        description="Access-log records waiting for their commit; a request beyond it is "
        "answered 503 with Retry-After (its data is never sent unrecorded)",
    )
    audit_batch_max: int = Field(
        default=200, ge=1, description="Access-log records appended per commit at most"
    )
    audit_commit_timeout_s: float = Field(
        default=5.0,
        gt=0,
        description="How long a request waits for the commit of its access-log record "
        "before answering 503 with Retry-After",
    )
    rate_limit_patient_writes_per_min: float = Field(
        default=30.0,
        ge=0,
        description="Writes (bookings, intake, messages, triage) per minute per patient, "
        "whatever their tokens or addresses (0 = off)",
    )
    rate_limit_patient_write_burst: int = Field(
        default=30, ge=1, description="Burst of writes per patient"
    )
    caregiver_max_days: int = Field(
        default=366,
        ge=1,
        le=3660,
        description="Longest caregiver grant a patient may give at once (days)",
    )
    forwarded_for_hops: int = Field(
        default=0,
        ge=0,
        le=5,
        description="Trusted proxies in front (X-Forwarded-For is read only when > 0)",
    )
