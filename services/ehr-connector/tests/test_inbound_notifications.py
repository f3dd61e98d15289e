"""Unit tests of notification parsing (R4 Parameters and R4B SubscriptionStatus), of the
detached-JWS verifier, and of the inbound rules (echo, heartbeat deadline)."""

from __future__ import annotations

import base64
import json
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from joserfc import jws
from joserfc.jwk import ECKey
from joserfc.jws import JWSRegistry
from joserfc.registry import HeaderParameter

from ehr_connector.inbound.domain.fhir_values import Ref, parse_instant, parse_reference
from ehr_connector.inbound.domain.notifications import (
    MalformedNotification,
    load_json,
    parse_notification,
    status_resources,
)
from ehr_connector.inbound.domain.rules import EchoVerdict, echo_verdict, heartbeat_overdue
from ehr_connector.inbound.service.signature import (
    JwksCache,
    NotificationVerifier,
    SignatureRejected,
)

BASE = "http://ehr.test/fhir"
ENDPOINT = "http://connector.test/fhir/notifications"


def _r4_status(kind: str, events: list[dict[str, Any]], since: int = 7) -> dict[str, Any]:
    parameters: list[dict[str, Any]] = [
        {"name": "subscription", "valueReference": {"reference": f"{BASE}/Subscription/sub-1"}},
        {"name": "topic", "valueCanonical": "http://example.org/topic/lab"},
        {"name": "status", "valueCode": "active"},
        {"name": "type", "valueCode": kind},
        {"name": "events-since-subscription-start", "valueString": str(since)},
    ]
    for event in events:
        parts = [
            {"name": "event-number", "valueString": str(event["number"])},
            {"name": "timestamp", "valueInstant": "2026-11-20T08:00:00.000Z"},
            {"name": "focus", "valueReference": {"reference": f"{BASE}/{event['focus']}"}},
        ]
        parts += [
            {"name": "additional-context", "valueReference": {"reference": f"{BASE}/{ref}"}}
            for ref in event.get("context", [])
        ]
        parameters.append({"name": "notification-event", "part": parts})
    return {"resourceType": "Parameters", "id": "s", "parameter": parameters}


def _bundle(status: dict[str, Any], entries: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "history",
        "entry": [
            {"fullUrl": "urn:uuid:s", "resource": status, "request": {"method": "GET"}},
            *entries,
        ],
    }


def _focus(ref: str, version: str, method: str = "PUT", resource: Any = None) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "fullUrl": f"{BASE}/{ref}",
        "request": {"method": method, "url": ref},
        "response": {"status": "200", "etag": f'W/"{version}"'},
    }
    if resource is not None:
        entry["resource"] = resource
    return entry


def test_r4_event_notification_gives_each_event_its_own_focus_version() -> None:
    # Two updates of one resource in one notification: two entries, matched in order.
    status = _r4_status(
        "event-notification",
        [
            {"number": 5, "focus": "MedicationRequest/m1"},
            {"number": 6, "focus": "MedicationRequest/m1"},
            {"number": 7, "focus": "DiagnosticReport/r1", "context": ["Observation/o1"]},
        ],
    )
    observation = {"resourceType": "Observation", "id": "o1", "status": "final"}
    bundle = _bundle(
        status,
        [
            _focus("MedicationRequest/m1", "2"),
            _focus("MedicationRequest/m1", "3"),
            _focus("DiagnosticReport/r1", "1", method="POST"),
            {"fullUrl": f"{BASE}/Observation/o1", "resource": observation},
        ],
    )
    notification = parse_notification(bundle)
    assert notification.fmt == "r4"
    assert notification.subscription_id == "sub-1"
    assert notification.type == "event-notification"
    assert notification.status.events_since_start == 7
    assert [(e.number, e.focus_version) for e in notification.events] == [
        (5, "2"),
        (6, "3"),
        (7, "1"),
    ]
    report = notification.events[2]
    assert report.focus == Ref("DiagnosticReport", "r1")
    assert report.interaction == "create"
    assert report.context == (Ref("Observation", "o1"),)
    assert report.context_resources == {"Observation/o1": observation}


def test_r4b_subscription_status_is_read_the_same_way() -> None:
    status = {
        "resourceType": "SubscriptionStatus",
        "status": "active",
        "type": "event-notification",
        "eventsSinceSubscriptionStart": "12",
        "notificationEvent": [
            {
                "eventNumber": "12",
                "timestamp": "2026-11-20T08:00:00Z",
                "focus": {"reference": f"{BASE}/Slot/s1"},
            }
        ],
        "subscription": {"reference": f"{BASE}/Subscription/sub-2"},
        "topic": "http://example.org/topic/slot",
    }
    resource = {"resourceType": "Slot", "id": "s1", "meta": {"versionId": "4"}}
    notification = parse_notification(
        _bundle(status, [{"fullUrl": f"{BASE}/Slot/s1", "resource": resource}])
    )
    assert notification.fmt == "r4b"
    assert notification.subscription_id == "sub-2"
    [event] = notification.events
    assert (event.number, event.focus_version, event.focus_resource) == (12, "4", resource)


def test_heartbeat_and_handshake_carry_no_events() -> None:
    for kind in ("heartbeat", "handshake"):
        notification = parse_notification(_bundle(_r4_status(kind, [], since=3), []))
        assert notification.type == kind
        assert notification.events == ()
        assert notification.status.events_since_start == 3


@pytest.mark.parametrize(
    ("body", "why"),
    [
        ({"resourceType": "Patient"}, "not a FHIR Bundle"),
        ({"resourceType": "Bundle", "type": "searchset", "entry": []}, "history"),
        ({"resourceType": "Bundle", "type": "history"}, "no entries"),
        ({"resourceType": "Bundle", "type": "history", "entry": [{"resource": {}}]}, "status"),
        (
            _bundle({"resourceType": "Parameters", "parameter": [{"name": "type"}]}, []),
            "Subscription",
        ),
        (
            _bundle(
                {
                    **_r4_status("event-notification", []),
                    "parameter": [
                        *_r4_status("event-notification", [])["parameter"],
                        {
                            "name": "notification-event",
                            "part": [{"name": "event-number", "valueString": "x"}],
                        },
                    ],
                },
                [],
            ),
            "not a number",
        ),
        (_bundle(_r4_status("mystery", []), []), "type"),
    ],
)
def test_malformed_bundles_are_refused_with_a_reason(body: Any, why: str) -> None:
    with pytest.raises(MalformedNotification, match=why):
        parse_notification(body)


def test_a_body_that_is_not_json_is_malformed() -> None:
    with pytest.raises(MalformedNotification):
        load_json(b"{not json")


def test_status_operation_answer_lists_statuses() -> None:
    searchset = {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [{"resource": _r4_status("query-status", [], since=41)}],
    }
    [status] = status_resources(searchset)
    assert (status.subscription_id, status.events_since_start, status.type) == (
        "sub-1",
        41,
        "query-status",
    )


def test_references_and_instants_are_read_leniently() -> None:
    assert parse_reference("http://x/fhir/Observation/a-1/_history/3") == Ref(
        "Observation", "a-1", "3"
    )
    assert parse_reference("#contained") is None
    assert parse_instant("2024-03") == datetime(2024, 3, 1, tzinfo=UTC)
    assert parse_instant("2024-03-02T10:00:00") == datetime(2024, 3, 2, 10, tzinfo=UTC)
    assert parse_instant("garbage") is None


# -- signatures -----------------------------------------------------------------------------

_REGISTRY = JWSRegistry(
    header_registry={
        "iat": HeaderParameter("iat", "int", True),
        "jti": HeaderParameter("jti", "str", True),
        "htu": HeaderParameter("htu", "str"),
    },
    algorithms=["ES256"],
)


def _sign(body: bytes, key: ECKey, **header: Any) -> str:
    protected = {
        "alg": "ES256",
        "kid": key.kid,
        "typ": "JOSE",
        "iat": int(time.time()),
        "jti": uuid.uuid4().hex,
        "htu": ENDPOINT,
    } | header
    compact = jws.serialize_compact(protected, body, key, registry=_REGISTRY)
    head, _payload, signature = compact.split(".")
    return f"{head}..{signature}"


@pytest.fixture
def key() -> ECKey:
    return ECKey.generate_key("P-256", parameters={"kid": "ehr-1"})


@pytest.fixture
def verifier(key: ECKey) -> NotificationVerifier:
    jwks = {"keys": [key.as_dict(private=False)]}
    http = httpx.AsyncClient(
        transport=httpx.MockTransport(lambda _r: httpx.Response(200, json=jwks))
    )

    async def url() -> str:
        return "http://ehr.test/auth/jwks.json"

    return NotificationVerifier(JwksCache(http, url), endpoint=ENDPOINT, max_age_s=300)


async def test_a_valid_signature_verifies(key: ECKey, verifier: NotificationVerifier) -> None:
    body = b'{"resourceType": "Bundle"}'
    verified = await verifier.verify(_sign(body, key), body)
    assert verified.kid == "ehr-1" and len(verified.jti) == 32


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda s, b, k: (s, b + b" "), "bad_signature"),
        (lambda s, b, k: (_sign(b, k, htu="http://elsewhere/hook"), b), "wrong_endpoint"),
        (lambda s, b, k: (_sign(b, k, iat=int(time.time()) - 3600), b), "stale_signature"),
        (lambda s, b, k: (_sign(b, k, kid="unknown"), b), "unknown_kid"),
        (lambda s, b, k: (None, b), "missing_signature"),
        (lambda s, b, k: (s.replace("..", "."), b), "malformed_signature"),
        (
            lambda s, b, k: (
                _sign(b, ECKey.generate_key("P-256", parameters={"kid": "ehr-1"})),
                b,
            ),
            "bad_signature",
        ),
    ],
)
async def test_bad_signatures_are_rejected_with_their_reason(
    key: ECKey, verifier: NotificationVerifier, mutate: Any, reason: str
) -> None:
    body = b'{"resourceType": "Bundle"}'
    signature, sent = mutate(_sign(body, key), body, key)
    with pytest.raises(SignatureRejected) as caught:
        await verifier.verify(signature, sent)
    assert caught.value.reason == reason


def test_signature_header_is_base64url_json() -> None:
    key = ECKey.generate_key("P-256", parameters={"kid": "k"})
    head = _sign(b"x", key).split(".")[0]
    decoded = json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))
    assert decoded["alg"] == "ES256"


# -- rules ----------------------------------------------------------------------------------


def test_echo_rules() -> None:
    assert echo_verdict(tagged=False, logged_version=True, resource_in_log=True) is EchoVerdict.OURS
    assert (
        echo_verdict(tagged=True, logged_version=False, resource_in_log=False) is EchoVerdict.OURS
    )
    assert (
        echo_verdict(tagged=False, logged_version=False, resource_in_log=True)
        is EchoVerdict.NOT_OURS
    )
    # A tag on a version our log does not know, of a resource we did write: maybe carried
    # forward by a clinician's change.
    assert (
        echo_verdict(tagged=True, logged_version=False, resource_in_log=True) is EchoVerdict.UNSURE
    )


def test_heartbeat_deadline() -> None:
    start = datetime(2026, 11, 20, 8, 0, tzinfo=UTC)
    assert not heartbeat_overdue(None, start, 10, 3.0, start + timedelta(seconds=29))
    assert heartbeat_overdue(None, start, 10, 3.0, start + timedelta(seconds=31))
    last = start + timedelta(seconds=100)
    assert not heartbeat_overdue(last, start, 10, 3.0, last + timedelta(seconds=20))
    assert heartbeat_overdue(last, start, 10, 3.0, last + timedelta(seconds=40))
