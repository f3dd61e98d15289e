"""Routing rules as data, rate-limit arithmetic and attachment checks (pure, no I/O)."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import yaml

from contracts.triage import Urgency
from messaging import domain
from messaging.app import load_rules
from messaging.domain import (
    AttachmentRefused,
    RoutingError,
    check_attachment,
    parse_rules,
    reply_subject,
    retry_after,
)
from messaging.settings import DEFAULT_ROUTING_FILE

RULES = load_rules(DEFAULT_ROUTING_FILE)
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 32


def test_a_chosen_topic_routes_to_its_pool_and_says_who_it_went_to() -> None:
    route = RULES.route_message("prescriptions", "Hello", "Can you help?")
    assert (route.pool, route.display) == ("prescriptions", "prescriptions team")
    assert route.rules_version == RULES.version
    # A specific topic wins over words that point elsewhere.
    assert RULES.route_message("billing", "Lab results", "my bill").pool == "billing"


def test_keywords_choose_the_pool_when_the_topic_is_other_or_missing() -> None:
    assert RULES.route_message(None, "Prescription refill", "x").pool == "prescriptions"
    assert RULES.route_message("other", "Question", "Is my A1c result back?").pool == (
        "test-results"
    )
    assert RULES.route_message(None, "Question", "Can I take ibuprofen?").pool == "care-team"
    # Whole words only: "labour" is not "lab".
    assert RULES.route_message(None, "Labour day", "closed?").pool == "care-team"


def test_triage_dispositions_route_to_pools() -> None:
    assert RULES.route_triage(Urgency.EMERGENCY, "care-team").pool == "urgent-nurses"
    assert RULES.route_triage(Urgency.URGENT, None).pool == "urgent-nurses"
    assert RULES.route_triage(Urgency.ROUTINE, "prescriptions").pool == "prescriptions"
    assert RULES.route_triage(Urgency.ROUTINE, "no-such-pool").pool == "care-team"


def _rules_data() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(DEFAULT_ROUTING_FILE.read_text())
    return data


def test_a_rule_naming_an_unknown_pool_is_refused_with_where() -> None:
    data = _rules_data()
    data["topics"][0]["pool"] = "pharmacy-typo"
    with pytest.raises(RoutingError, match=r"topics\[0\]\.pool names pool 'pharmacy-typo'"):
        parse_rules(data)
    data = _rules_data()
    del data["triage"]["urgent"]
    with pytest.raises(RoutingError, match=r"triage\.urgent"):
        parse_rules(data)


def test_reply_subject_falls_back_for_clinician_started_threads() -> None:
    assert reply_subject("Refill") == "Refill"
    assert reply_subject(None) == "Message from the patient"


def test_retry_after_counts_from_the_send_that_must_leave_the_window() -> None:
    now = datetime(2026, 12, 3, 10, 0, tzinfo=UTC)
    window = timedelta(seconds=60)
    sent = [now - timedelta(seconds=50), now - timedelta(seconds=20), now - timedelta(seconds=5)]
    assert retry_after(sent, 4, window, now) is None
    assert retry_after(sent, 3, window, now) == 10
    assert retry_after(sent, 2, window, now) == 40


def test_attachments_must_be_images_or_pdf_within_the_size_limit() -> None:
    data = base64.b64encode(PNG).decode()
    assert check_attachment("image/png", "rash.png", data, 1024) == PNG
    with pytest.raises(AttachmentRefused, match="type"):
        check_attachment("text/html", "x.html", base64.b64encode(b"<p>").decode(), 1024)
    with pytest.raises(AttachmentRefused, match="larger than"):
        check_attachment("image/png", "big.png", data, 8)
    with pytest.raises(AttachmentRefused, match="not application/pdf"):
        check_attachment("application/pdf", "fake.pdf", data, 1024)
    with pytest.raises(AttachmentRefused, match="base64"):
        check_attachment("image/png", "x.png", "***", 1024)


# -- an answer's place in its thread ------------------------------------------------------


def test_an_answer_keeps_its_own_time_when_it_is_later() -> None:
    asked = datetime(2026, 12, 3, 12, 0, 5, 250_000, tzinfo=UTC)
    answered = asked + timedelta(seconds=40)
    assert domain.answer_time(answered, asked) == answered
    assert domain.answer_time(answered, None) == answered


def test_an_answer_recorded_to_the_second_is_placed_just_after_what_it_answers() -> None:
    # The EHR wrote `sent` to the second, within the second the patient's message was sent:
    # by its own time it would sort before her message, by hers it would tie with it.
    asked = datetime(2026, 12, 3, 12, 0, 5, 250_000, tzinfo=UTC)
    placed = domain.answer_time(asked.replace(microsecond=0), asked)
    assert placed > asked
    assert placed - asked == timedelta(microseconds=1)
    assert domain.answer_time(asked, asked) > asked
