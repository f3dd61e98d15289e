"""Rules of the inbound side, free of I/O: outcomes, echo decisions, heartbeat deadlines."""

from __future__ import annotations

from datetime import datetime, timedelta
from enum import StrEnum


class Outcome(StrEnum):
    """What became of one change (an event, or a resource found by a recovery search)."""

    PUBLISHED = "published"
    DUPLICATE = "duplicate"
    ECHO = "echo"
    UNLINKED = "unlinked"
    REJECTED = "rejected"
    SKIPPED = "skipped"
    GONE = "gone"
    RECOVERED_BY_SEARCH = "recovered-by-search"


# Outcomes that settle a resource version: the same version reached again is a duplicate.
SETTLING = frozenset(
    {Outcome.PUBLISHED, Outcome.ECHO, Outcome.UNLINKED, Outcome.REJECTED, Outcome.SKIPPED}
)
# Outcomes an operator should see in the rejection list.
RECORDED_AS_REJECTION = frozenset({Outcome.REJECTED, Outcome.GONE})


class EchoVerdict(StrEnum):
    """Whether a version is the connector's own write."""

    OURS = "ours"
    NOT_OURS = "not-ours"
    UNSURE = "unsure"


def echo_verdict(*, tagged: bool, logged_version: bool, resource_in_log: bool) -> EchoVerdict:
    """Decide whether a resource version is an echo of our own write.

    The write log is authoritative for an exact version. Without it, the origin tag decides,
    except that a tag on a resource our log knows under other versions may have been carried
    forward by another writer (a clinician cancelling an appointment the portal booked):
    that is `UNSURE` until our own write's log row has had time to commit.
    """
    if logged_version:
        return EchoVerdict.OURS
    if not tagged:
        return EchoVerdict.NOT_OURS
    if not resource_in_log:
        return EchoVerdict.OURS
    return EchoVerdict.UNSURE


def heartbeat_overdue(
    last_notification_at: datetime | None,
    since: datetime,
    period_s: int,
    factor: float,
    now: datetime,
) -> bool:
    """Whether no notification came within `factor` heartbeat periods.

    `since` (when monitoring of the Subscription began) stands in for a notification that
    never came, so a new Subscription gets the same grace.
    """
    if period_s <= 0:
        return False
    last = max(last_notification_at or since, since)
    return now - last > timedelta(seconds=period_s * factor)
