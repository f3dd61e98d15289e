"""Whether the inbound side is doing its job: notifications that failed to be processed
and are not yet made good.

A notification the connector could not process (its database away, the EHR unreadable, a
bug) is answered 503, so the EHR delivers it again; until an event notification of that
Subscription is processed or its gap is recovered, `/readyz` says the inbound side is
failing, and `inbound_notifications_failed_total{reason}` counts each failure.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg  # type: ignore[import-untyped]
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from ehr_connector.ehr.errors import EhrError
from ehr_connector.inbound.metrics import NOTIFICATIONS_FAILED
from servicekit.errors import DependencyUnavailable

UNATTRIBUTED = ""  # a failure before the notification named its Subscription


# SQLSTATE classes/codes that mean "the database is not there for us": connection
# exceptions, operator intervention (shutdown, cannot connect now), insufficient resources,
# and 55000, which PostgreSQL answers while a database refuses connections.
_UNAVAILABLE_STATES = ("08", "57P", "53", "55000")


def failure_reason(exc: BaseException) -> str:
    """A short, bounded label for why processing failed."""
    if isinstance(exc, DependencyUnavailable | EhrError):
        return "ehr_unavailable"
    for cause in _chain(exc):
        if isinstance(cause, OperationalError | InterfaceError | PoolTimeout | OSError):
            return "database_unavailable"
        if isinstance(cause, DBAPIError) and cause.connection_invalidated:
            return "database_unavailable"
        if isinstance(cause, asyncpg.InterfaceError):
            return "database_unavailable"
        state = getattr(cause, "sqlstate", None)
        if isinstance(state, str) and state.startswith(_UNAVAILABLE_STATES):
            return "database_unavailable"
    return "internal_error"


def _chain(exc: BaseException) -> list[BaseException]:
    """The exception, what it wraps (SQLAlchemy's `orig`), and its causes."""
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen and len(seen) < 10:
        seen.append(current)
        orig = getattr(current, "orig", None)
        if isinstance(orig, BaseException) and orig not in seen:
            seen.append(orig)
        current = current.__cause__ or current.__context__
    return seen


@dataclass
class _Failing:
    since: datetime
    count: int
    reason: str


class ProcessingHealth:
    """Failures per Subscription since its last good processing."""

    def __init__(self) -> None:
        self._failing: dict[str, _Failing] = {}

    def failed(self, subscription_id: str | None, reason: str) -> None:
        """Count a failed notification (or recovery) of a Subscription."""
        NOTIFICATIONS_FAILED.labels(reason).inc()
        key = subscription_id or UNATTRIBUTED
        current = self._failing.get(key)
        if current is None:
            self._failing[key] = _Failing(datetime.now(UTC), 1, reason)
        else:
            current.count += 1
            current.reason = reason

    def processed(self, subscription_id: str) -> None:
        """Events of a Subscription were processed (live or recovered): it is in order."""
        self._failing.pop(subscription_id, None)
        self._failing.pop(UNATTRIBUTED, None)

    def problem(self, topic_of: dict[str, str]) -> str | None:
        """The readiness message while anything is failing (`topic_of`: id -> topic)."""
        if not self._failing:
            return None
        parts = []
        for key, failing in sorted(self._failing.items(), key=lambda kv: kv[1].since):
            name = topic_of.get(key, key).rsplit("/", 1)[-1] or "notifications"
            parts.append(
                f"{name}: {failing.count} failed since {failing.since.isoformat()} "
                f"({failing.reason})"
            )
        return "failing: " + "; ".join(parts)
