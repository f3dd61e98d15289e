"""Prometheus metrics of messaging: work per care-team pool (counted once committed, so a
retried handler or a rolled-back request does not count twice)."""

from __future__ import annotations

from prometheus_client import Counter
from sqlalchemy.ext.asyncio import AsyncSession

from servicekit.metrics import inc_after_commit

POOL_MESSAGES = Counter(
    "messaging_pool_messages_total",
    "Messages filed in a care-team pool's threads, by direction",
    ["pool", "direction"],
)
POOL_TRIAGE_ITEMS = Counter(
    "messaging_pool_triage_items_total",
    "Triage summaries queued for a care-team pool, by urgency",
    ["pool", "urgency"],
)


def count_message_after_commit(session: AsyncSession, pool: str, direction: str) -> None:
    """Count one message in `pool` when the session's transaction commits."""
    inc_after_commit(session, POOL_MESSAGES.labels(pool, direction))


def count_triage_item_after_commit(session: AsyncSession, pool: str, urgency: str) -> None:
    """Count one triage summary queued for `pool` when the transaction commits."""
    inc_after_commit(session, POOL_TRIAGE_ITEMS.labels(pool, urgency))
