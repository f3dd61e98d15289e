"""Settings of topic-based Subscriptions, read from `SANDBOX_*` environment variables."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class SubscriptionSettings(BaseSettings):
    """Notification format, event retention and delivery retry policy."""

    model_config = SettingsConfigDict(env_prefix="SANDBOX_", extra="ignore")

    notification_format: Literal["r4", "r4b"] = Field(
        default="r4",
        description="r4: status as Parameters (backport-subscription-status-r4); "
        "r4b: status as a SubscriptionStatus resource",
    )
    event_retention_hours: float = Field(default=72.0, gt=0)
    delivery_max_failures: int = Field(
        default=5, ge=1, description="Consecutive failed attempts before status=error"
    )
    delivery_retry_base_s: float = Field(default=1.0, gt=0)
    delivery_retry_max_s: float = Field(default=60.0, gt=0)
    delivery_timeout_s: float = Field(
        default=10.0, gt=0, description="Per-attempt timeout when backport-timeout is absent"
    )
    delivery_timeout_max_s: float = Field(
        default=120.0, gt=0, description="Upper bound on a client's backport-timeout"
    )
    max_events_per_notification: int = Field(
        default=100, ge=1, description="Batch size when backport-max-count is absent"
    )
    reorder_flush_s: float = Field(
        default=2.0,
        gt=0,
        description="With the reorder fault, how long a held-back notification waits for a "
        "next one before it is sent anyway",
    )
    prune_interval_s: float = Field(default=300.0, gt=0)
