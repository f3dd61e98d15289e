"""Reading and validating a backport-profile `Subscription` (R4).

`parse_subscription` turns a stored Subscription resource into a `SubscriptionConfig`
(topic, filters, endpoint, headers, payload content, heartbeat, timeout, max count);
`validate_subscription` checks a client's resource before it is stored and raises a
422 OperationOutcome for an unknown topic, an unsupported channel or a malformed
extension.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import parse_qsl, urlsplit

from ehr_sandbox.fhir.outcomes import FhirError, issue
from ehr_sandbox.subscriptions.topics import Topic, normalise_reference, topic_for

BACKPORT = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/"
PROFILE = BACKPORT + "backport-subscription"
EXT_FILTER = BACKPORT + "backport-filter-criteria"
EXT_CONTENT = BACKPORT + "backport-payload-content"
EXT_HEARTBEAT = BACKPORT + "backport-heartbeat-period"
EXT_TIMEOUT = BACKPORT + "backport-timeout"
EXT_MAX_COUNT = BACKPORT + "backport-max-count"
EXT_CHANNEL_TYPE = BACKPORT + "backport-channel-type"

PayloadContent = Literal["empty", "id-only", "full-resource"]
PAYLOAD_CONTENTS: tuple[PayloadContent, ...] = ("empty", "id-only", "full-resource")
SUPPORTED_MIME = ("application/fhir+json", "application/json")
MAX_HEADERS = 20
MAX_HEADER_LENGTH = 4096
# Headers the sandbox sets itself; a client may not override them.
_RESERVED_HEADERS = frozenset(
    {"content-type", "content-length", "host", "x-signature", "transfer-encoding", "connection"}
)


@dataclass(frozen=True)
class Filter:
    """One `backport-filter-criteria`: a resource type and the patients it allows."""

    resource_type: str
    patients: frozenset[str]


@dataclass(frozen=True)
class SubscriptionConfig:
    """What the delivery machinery needs to know about one Subscription."""

    id: str
    status: str
    topic: Topic
    filters: tuple[Filter, ...]
    endpoint: str
    headers: tuple[tuple[str, str], ...]
    content: PayloadContent
    heartbeat_period_s: int | None
    timeout_s: int | None
    max_count: int | None
    end: str | None

    def matches_patients(self, patients: set[str]) -> bool:
        """Whether a focus resource about `patients` passes every filter (logical AND)."""
        return all(bool(f.patients & patients) for f in self.filters)


class SubscriptionInvalid(Exception):
    """A Subscription the sandbox cannot serve; `issues` are OperationOutcome issues."""

    def __init__(self, issues: list[dict[str, Any]]) -> None:
        super().__init__("; ".join(str(i.get("diagnostics")) for i in issues))
        self.issues = issues

    def to_fhir_error(self) -> FhirError:
        """The 422 OperationOutcome for this problem."""
        return FhirError(422, str(self), issues=self.issues)


def _extensions(element: Any, url: str) -> list[dict[str, Any]]:
    if not isinstance(element, dict):
        return []
    found = element.get("extension")
    if not isinstance(found, list):
        return []
    return [e for e in found if isinstance(e, dict) and e.get("url") == url]


def _one_int(
    element: Any, url: str, value_key: str, minimum: int, where: str, problems: list[dict[str, Any]]
) -> int | None:
    found = _extensions(element, url)
    if not found:
        return None
    if len(found) > 1:
        problems.append(issue("error", "invalid", f"At most one {url} is allowed", [where]))
        return None
    value = found[0].get(value_key)
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        problems.append(issue("error", "invalid", f"{url} needs {value_key} >= {minimum}", [where]))
        return None
    return value


def _parse_filter(text: Any, topic: Topic, problems: list[dict[str, Any]]) -> Filter | None:
    where = "Subscription.criteria.extension"
    if not isinstance(text, str) or not text.strip():
        problems.append(
            issue("error", "invalid", "backport-filter-criteria needs valueString", [where])
        )
        return None
    resource_type, sep, query = text.strip().partition("?")
    if not sep:
        resource_type, query = topic.resource_type, text.strip()
    if resource_type != topic.resource_type:
        problems.append(
            issue(
                "error",
                "not-supported",
                f"Filter resource type {resource_type} does not match the topic's "
                f"{topic.resource_type}",
                [where],
            )
        )
        return None
    patients: set[str] = set()
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=True)
    except ValueError:
        pairs = []
    if not pairs:
        # `Type?` restricts nothing: every resource of the topic's type (server-wide). HAPI
        # requires a filter on every backport Subscription and accepts this form, so a
        # client that must send one for HAPI can send the same to the sandbox.
        if sep and not query:
            return None
        problems.append(issue("error", "invalid", f"Filter {text!r} has no parameters", [where]))
        return None
    for name, value in pairs:
        if name not in ("patient", "subject", "patient:Patient", "subject:Patient"):
            problems.append(
                issue(
                    "error",
                    "not-supported",
                    f"Filter parameter {name!r} is not supported (topics filter on 'patient')",
                    [where],
                )
            )
            return None
        for part in value.split(","):
            ref = normalise_reference(part if "/" in part else f"Patient/{part}")
            if ref is None or not ref.startswith("Patient/"):
                problems.append(
                    issue("error", "invalid", f"{part!r} is not a Patient reference", [where])
                )
                return None
            patients.add(ref)
    return Filter(resource_type=resource_type, patients=frozenset(patients))


def _parse_headers(
    channel: dict[str, Any], problems: list[dict[str, Any]]
) -> list[tuple[str, str]]:
    raw = channel.get("header", [])
    if not isinstance(raw, list):
        problems.append(
            issue(
                "error", "invalid", "channel.header must be a list", ["Subscription.channel.header"]
            )
        )
        return []
    if len(raw) > MAX_HEADERS:
        problems.append(
            issue(
                "error",
                "too-long",
                f"At most {MAX_HEADERS} headers",
                ["Subscription.channel.header"],
            )
        )
        return []
    headers: list[tuple[str, str]] = []
    for index, item in enumerate(raw):
        where = f"Subscription.channel.header[{index}]"
        if not isinstance(item, str) or len(item) > MAX_HEADER_LENGTH:
            problems.append(
                issue("error", "invalid", "A header must be a 'Name: value' string", [where])
            )
            continue
        name, sep, value = item.partition(":")
        name, value = name.strip(), value.strip()
        valid_name = bool(name) and all(c.isalnum() or c in "!#$%&'*+-.^_`|~" for c in name)
        if not sep or not valid_name or any(c in value for c in "\r\n\0"):
            problems.append(
                issue("error", "invalid", "A header must be a 'Name: value' string", [where])
            )
            continue
        if name.lower() in _RESERVED_HEADERS:
            problems.append(
                issue("error", "not-supported", f"Header {name} is set by the server", [where])
            )
            continue
        headers.append((name, value))
    return headers


def _check_endpoint(endpoint: Any, problems: list[dict[str, Any]]) -> str:
    where = ["Subscription.channel.endpoint"]
    if not isinstance(endpoint, str) or not endpoint:
        problems.append(issue("error", "required", "A rest-hook needs channel.endpoint", where))
        return ""
    try:
        parts = urlsplit(endpoint)
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        problems.append(issue("error", "invalid", "channel.endpoint must be an http(s) URL", where))
        return ""
    return endpoint


def parse_subscription(resource: dict[str, Any]) -> SubscriptionConfig:
    """Read a Subscription resource, or raise SubscriptionInvalid with every problem found."""
    problems: list[dict[str, Any]] = []
    if resource.get("resourceType") != "Subscription":
        raise SubscriptionInvalid([issue("error", "invalid", "Not a Subscription")])
    criteria = resource.get("criteria")
    criteria_ext = resource.get("_criteria")
    topic = topic_for(criteria) if isinstance(criteria, str) else None
    if topic is None:
        raise SubscriptionInvalid(
            [
                issue(
                    "error",
                    "not-supported",
                    f"Unknown SubscriptionTopic {criteria!r}: criteria must be one of the "
                    "topic canonical URLs listed in the CapabilityStatement",
                    ["Subscription.criteria"],
                )
            ]
        )
    filters: list[Filter] = []
    for ext in _extensions(criteria_ext, EXT_FILTER):
        parsed = _parse_filter(ext.get("valueString"), topic, problems)
        if parsed is not None:
            filters.append(parsed)
    channel = resource.get("channel")
    if not isinstance(channel, dict):
        raise SubscriptionInvalid(
            [issue("error", "required", "channel is required", ["Subscription.channel"])]
        )
    channel_type = channel.get("type")
    custom_type = _extensions(channel.get("_type"), EXT_CHANNEL_TYPE)
    if channel_type != "rest-hook" or custom_type:
        problems.append(
            issue(
                "error",
                "not-supported",
                f"Channel type {channel_type!r} is not supported; only rest-hook is",
                ["Subscription.channel.type"],
            )
        )
    endpoint = _check_endpoint(channel.get("endpoint"), problems)
    payload = channel.get("payload")
    if payload is not None and payload not in SUPPORTED_MIME:
        problems.append(
            issue(
                "error",
                "not-supported",
                f"Payload type {payload!r} is not supported; use application/fhir+json",
                ["Subscription.channel.payload"],
            )
        )
    content: PayloadContent = "id-only"
    content_ext = _extensions(channel.get("_payload"), EXT_CONTENT)
    if content_ext:
        value = content_ext[0].get("valueCode")
        if value not in PAYLOAD_CONTENTS:
            problems.append(
                issue(
                    "error",
                    "invalid",
                    "backport-payload-content must be empty, id-only or full-resource",
                    ["Subscription.channel.payload.extension"],
                )
            )
        else:
            content = value
    heartbeat = _one_int(
        channel, EXT_HEARTBEAT, "valueUnsignedInt", 1, "Subscription.channel.extension", problems
    )
    timeout = _one_int(
        channel, EXT_TIMEOUT, "valueUnsignedInt", 1, "Subscription.channel.extension", problems
    )
    max_count = _one_int(
        channel, EXT_MAX_COUNT, "valuePositiveInt", 1, "Subscription.channel.extension", problems
    )
    headers = _parse_headers(channel, problems)
    if problems:
        raise SubscriptionInvalid(problems)
    end = resource.get("end")
    return SubscriptionConfig(
        id=str(resource.get("id", "")),
        status=str(resource.get("status", "requested")),
        topic=topic,
        filters=tuple(filters),
        endpoint=endpoint,
        headers=tuple(headers),
        content=content,
        heartbeat_period_s=heartbeat,
        timeout_s=timeout,
        max_count=max_count,
        end=end if isinstance(end, str) else None,
    )
