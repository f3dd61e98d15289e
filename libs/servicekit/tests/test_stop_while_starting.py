"""A service stopped while its consumers are still starting leaves no consumer behind.

The broker connects in the background (the HTTP side comes up while Kafka is away), and
starting a consumer takes a while. `stop()` used to stop the broker first and cancel that
background start only afterwards, having waited for the outbox relay in between: the start
went on meanwhile and launched a consume loop after its subscriber had been stopped. In a
test run every such service left a loop behind (often one without its consumer, which
FastStream's supervisor restarted for ever in a tight loop) until the run crawled.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import pytest

from devstack.topics import ensure_topics
from servicekit.settings import ServiceSettings

from . import fakeservice

pytestmark = [pytest.mark.integration]


async def test_a_consumer_still_starting_when_the_service_stops_never_runs(
    database_url: str, kafka_bootstrap: str, unique_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    await ensure_topics(kafka_bootstrap, unique_prefix)
    settings = ServiceSettings(
        service_name="fake",
        database_url=database_url,
        kafka_bootstrap_servers=kafka_bootstrap,
        kafka_enable_idempotence=os.environ.get("KAFKA", "tansu") == "apache",
        topic_prefix=unique_prefix,
        group_prefix=unique_prefix,
    )
    service = fakeservice.build(settings)
    (subscriber,) = service.broker.subscribers
    # Hold the consumer's start at its first step until the broker has been stopped: the
    # moment a slow start (a loaded machine, a slow broker) meets a shutdown.
    starting, stopped = asyncio.Event(), asyncio.Event()
    kind, broker_kind = type(subscriber), type(service.broker)
    ensure, stop_broker = kind._ensure_topics, broker_kind.stop

    async def held_start(self: Any) -> None:
        starting.set()
        await stopped.wait()
        await ensure(self)

    async def observed_stop(self: Any, *args: Any, **kwargs: Any) -> None:
        await stop_broker(self, *args, **kwargs)
        stopped.set()

    monkeypatch.setattr(kind, "_ensure_topics", held_start)
    monkeypatch.setattr(broker_kind, "stop", observed_stop)

    await service.start()
    await asyncio.wait_for(starting.wait(), timeout=60)
    await service.stop()
    await asyncio.sleep(0)  # anything the stop left runnable gets its turn

    assert subscriber.tasks == [], "a consume loop started after the service stopped"
    assert subscriber.consumer is None or subscriber.consumer._closed
