"""Which EHR answers are retried, re-read, waited out or final."""

from __future__ import annotations

from datetime import UTC, datetime

import httpx
import pytest

from ehr_connector.ehr.errors import (
    CircuitOpen,
    EhrConflict,
    EhrRejected,
    EhrServerError,
    EhrStateForbids,
    EhrUnavailable,
    outcome_text,
)
from ehr_connector.ehr.retry import (
    Disposition,
    TransientFailure,
    classify_status,
    is_retryable,
    parse_retry_after,
)
from servicekit.errors import DependencyUnavailable, PermanentError


@pytest.mark.parametrize(
    ("status", "disposition"),
    [
        (200, Disposition.OK),
        (201, Disposition.OK),
        (304, Disposition.OK),
        (400, Disposition.PERMANENT),
        (401, Disposition.UNAUTHORISED),
        (403, Disposition.PERMANENT),
        (404, Disposition.NOT_FOUND),
        (405, Disposition.PERMANENT),
        (408, Disposition.TRANSIENT),
        (409, Disposition.CONFLICT),
        (410, Disposition.GONE),
        (412, Disposition.CONFLICT),
        (415, Disposition.PERMANENT),
        (422, Disposition.PERMANENT),
        (429, Disposition.TRANSIENT),
        (500, Disposition.TRANSIENT),
        (502, Disposition.TRANSIENT),
        (503, Disposition.TRANSIENT),
        (504, Disposition.TRANSIENT),
    ],
)
def test_status_classification(status: int, disposition: Disposition) -> None:
    assert classify_status(status) is disposition


def _retryable(exc: BaseException, *, idempotent: bool = True) -> bool:
    return is_retryable(exc, idempotent=idempotent, retry_after_max_s=5)


def test_transient_answers_are_retried_when_the_request_is_idempotent() -> None:
    for status in (408, 429, 500, 502, 503, 504):
        assert _retryable(TransientFailure(status, None, None))


def test_an_unconditional_create_is_retried_only_when_it_surely_had_no_effect() -> None:
    assert _retryable(TransientFailure(429, 1, None), idempotent=False)
    assert _retryable(TransientFailure(503, 1, None), idempotent=False)
    assert not _retryable(TransientFailure(500, None, None), idempotent=False)
    assert not _retryable(TransientFailure(504, None, None), idempotent=False)
    request = httpx.Request("POST", "http://ehr/fhir/Task")
    assert _retryable(httpx.ConnectError("refused", request=request), idempotent=False)
    assert not _retryable(httpx.ReadTimeout("slow", request=request), idempotent=False)
    assert _retryable(httpx.ReadTimeout("slow", request=request), idempotent=True)


def test_a_long_retry_after_is_waited_out_in_kafka_not_in_the_call() -> None:
    assert _retryable(TransientFailure(503, 5, None))
    assert not _retryable(TransientFailure(503, 6, None))


def test_other_errors_are_not_retried_inside_the_call() -> None:
    assert not _retryable(CircuitOpen("open"))
    assert not _retryable(ValueError("bug"))


def test_retry_after_as_seconds_or_http_date() -> None:
    now = datetime(2026, 11, 20, 8, 0, 0, tzinfo=UTC)
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after("Fri, 20 Nov 2026 08:00:30 GMT", now=now) == 30.0
    assert parse_retry_after("Fri, 20 Nov 2026 07:00:00 GMT", now=now) == 0.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None


def test_error_types_map_onto_the_consumer_semantics() -> None:
    outcome = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "invalid", "diagnostics": "Bad date"}],
    }
    rejected = EhrRejected("EHR answered 422", status=422, outcome=outcome)
    assert isinstance(rejected, PermanentError)
    assert str(rejected) == "EHR answered 422: Bad date (invalid)"
    assert rejected.outcome_text == "Bad date (invalid)"
    assert isinstance(EhrStateForbids("forbidden"), PermanentError)
    assert isinstance(EhrUnavailable("down"), DependencyUnavailable)
    assert isinstance(CircuitOpen("open"), DependencyUnavailable)
    # Neither permanent nor a dependency outage: the consumer's bounded retries apply.
    for bounded in (EhrConflict("412"), EhrServerError("500")):
        assert not isinstance(bounded, PermanentError | DependencyUnavailable)


def test_outcome_text_joins_issues_and_falls_back_to_details_text() -> None:
    assert (
        outcome_text(
            {
                "issue": [
                    {"code": "conflict", "diagnostics": "Version conflict"},
                    {"code": "invalid", "details": {"text": "Bad slot"}},
                    {"code": "processing"},
                ]
            }
        )
        == "Version conflict (conflict); Bad slot (invalid); processing"
    )
    assert outcome_text(None) == ""
