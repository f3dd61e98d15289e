"""The change feed: every committed create, update and delete, delivered to listeners.

The store publishes a `ResourceChange` after each commit. One dispatcher task delivers
changes to the listeners strictly in commit order, one change at a time; the writing
request waits until its change has been delivered, so when a write returns, every
listener has seen it. A listener may itself write to the store (a Subscription status
update, say): its own change is queued behind the one being delivered, and that nested
write does not wait, which would deadlock. A listener that raises is logged and skipped;
it never fails the write.

Subscribe with `app.state.change_feed.subscribe(listener)`; keep listeners quick (hand
slow work such as webhook delivery to your own task).
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from servicekit.logging import get_logger

log = get_logger(__name__)

ChangeInteraction = Literal["create", "update", "delete"]


@dataclass(frozen=True)
class ResourceChange:
    """One committed write.

    For a delete, `resource` is the last content of the resource with the tombstone's
    `meta.versionId`/`meta.lastUpdated`, and `previous` is the version before.
    """

    resource_type: str
    id: str
    version_id: str
    interaction: ChangeInteraction
    resource: dict[str, Any]
    previous: dict[str, Any] | None
    occurred_at: datetime


Listener = Callable[[ResourceChange], Awaitable[None]]

_delivering: contextvars.ContextVar[bool] = contextvars.ContextVar("_delivering", default=False)

# How long a write waits for its listeners before answering anyway.
DELIVERY_WAIT_S = 10.0


class ChangeFeed:
    """Ordered, in-process delivery of `ResourceChange`s to async listeners."""

    def __init__(self) -> None:
        self._listeners: list[Listener] = []
        self._queue: asyncio.Queue[tuple[ResourceChange, asyncio.Future[None]] | None] | None = None
        self._task: asyncio.Task[None] | None = None

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call `listener` for every change from now on; returns a function to unsubscribe."""
        self._listeners.append(listener)

        def unsubscribe() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return unsubscribe

    def _ensure_started(self) -> asyncio.Queue[tuple[ResourceChange, asyncio.Future[None]] | None]:
        if self._queue is None or self._task is None or self._task.done():
            self._queue = asyncio.Queue()
            self._task = asyncio.create_task(self._run(self._queue), name="ehr-change-feed")
        return self._queue

    def enqueue(self, change: ResourceChange) -> asyncio.Future[None]:
        """Queue `change` for delivery (call in commit order); returns its delivery future."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._ensure_started().put_nowait((change, done))
        return done

    async def wait_delivered(self, done: asyncio.Future[None]) -> None:
        """Wait until a queued change has reached every listener (not from inside one)."""
        if _delivering.get():
            return
        try:
            await asyncio.wait_for(asyncio.shield(done), timeout=DELIVERY_WAIT_S)
        except TimeoutError:
            log.warning("change_feed_slow_listener", wait_s=DELIVERY_WAIT_S)

    async def publish(self, change: ResourceChange) -> None:
        """Queue `change` and wait for its delivery."""
        await self.wait_delivered(self.enqueue(change))

    async def drain(self) -> None:
        """Wait until every change queued so far has been delivered."""
        if self._queue is not None and self._task is not None and not self._task.done():
            marker = self.enqueue_marker()
            await marker

    def enqueue_marker(self) -> asyncio.Future[None]:
        """A future resolved once everything queued before it has been delivered."""
        queue = self._ensure_started()
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        queue.put_nowait((_MARKER, done))
        return done

    async def close(self) -> None:
        """Deliver what is queued, then stop the dispatcher."""
        if self._queue is None or self._task is None:
            return
        if not self._task.done():
            self._queue.put_nowait(None)
            await self._task
        self._queue = None
        self._task = None

    async def _run(
        self, queue: asyncio.Queue[tuple[ResourceChange, asyncio.Future[None]] | None]
    ) -> None:
        _delivering.set(True)
        while True:
            item = await queue.get()
            if item is None:
                return
            change, done = item
            if change is not _MARKER:
                await self._deliver(change)
            if not done.done():
                done.set_result(None)

    async def _deliver(self, change: ResourceChange) -> None:
        for listener in list(self._listeners):
            try:
                await listener(change)
            except Exception:
                # A broken listener must not fail the write nor starve the others.
                log.exception(
                    "change_listener_failed",
                    listener=getattr(listener, "__qualname__", type(listener).__name__),
                    resource_type=change.resource_type,
                    resource_id=change.id,
                    version_id=change.version_id,
                )


# A queue entry that only marks a position (see `drain`).
_MARKER = ResourceChange("", "", "", "create", {}, None, datetime.min)
