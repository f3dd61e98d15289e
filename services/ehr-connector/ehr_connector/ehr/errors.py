"""Typed failures of EHR calls, mapped onto the consumer loop's failure semantics.

The consumer loop (`servicekit.consumer`) decides from the exception type: a
`PermanentError` dead-letters at once, a `DependencyUnavailable` waits in Kafka without
spending the message's retry budget, anything else is retried a bounded number of times.
Every error carries the EHR's OperationOutcome when it sent one, so a dead letter says
what the EHR objected to.
"""

from __future__ import annotations

from ehr_connector.ehr.port import FhirJson
from servicekit.errors import DependencyUnavailable, PermanentError


def outcome_text(outcome: FhirJson | None) -> str:
    """The human-readable part of an OperationOutcome: each issue's diagnostics or text."""
    if not outcome:
        return ""
    parts: list[str] = []
    for issue in outcome.get("issue", []):
        if not isinstance(issue, dict):
            continue
        text = issue.get("diagnostics") or (issue.get("details") or {}).get("text")
        code = issue.get("code")
        if text:
            parts.append(f"{text} ({code})" if code else str(text))
        elif code:
            parts.append(str(code))
    return "; ".join(parts)


def operation_outcome(code: str, diagnostics: str, severity: str = "error") -> FhirJson:
    """An OperationOutcome with one issue (for refusals the connector decides itself)."""
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": severity, "code": code, "diagnostics": diagnostics}],
    }


class EhrError(Exception):
    """An EHR call that did not succeed; `status` is the HTTP status (0 = no response)."""

    def __init__(
        self,
        message: str,
        *,
        status: int = 0,
        outcome: FhirJson | None = None,
        interaction: str = "",
        resource_type: str = "",
    ) -> None:
        text = outcome_text(outcome)
        super().__init__(f"{message}: {text}" if text else message)
        self.status = status
        self.outcome = outcome
        self.interaction = interaction
        self.resource_type = resource_type

    @property
    def outcome_text(self) -> str:
        """The OperationOutcome's text, or this error's message when there was none."""
        return outcome_text(self.outcome) or str(self)


class EhrRejected(EhrError, PermanentError):
    """The EHR refused the request for good (4xx other than 408/409/412/429)."""


class EhrNotFound(EhrRejected):
    """404: the resource does not exist."""


class EhrGone(EhrRejected):
    """410: the resource was deleted."""


class EhrConflict(EhrError):
    """409 or 412: a version or business conflict; the caller re-reads and decides."""


class EhrStateForbids(EhrError, PermanentError):
    """The EHR's current state of a resource forbids the change (e.g. cancelling a
    fulfilled appointment). Raised by the connector after reading that state."""


class EhrServerError(EhrError):
    """500s that persisted through the call's retries: the consumer retries the event a
    bounded number of times, then dead-letters it (a request the EHR always fails on
    must not block the partition forever)."""


class EhrUnavailable(EhrError, DependencyUnavailable):
    """The EHR is unreachable, overloaded or down (timeouts, connection errors, 502-504,
    429 beyond the retry budget): the event waits in Kafka and is retried later."""


class CircuitOpen(EhrUnavailable):
    """The circuit breaker is open: no call is made until its cool-down has passed."""


class EhrAuthFailed(EhrUnavailable):
    """The EHR refuses our credentials (token endpoint error, or 401 after a fresh token).

    A configuration problem, not the event's fault: events wait until it is fixed, and
    `/readyz` reports it."""
