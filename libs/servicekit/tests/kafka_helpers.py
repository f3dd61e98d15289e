"""Helpers for the kit's tests against a real broker: read a topic to the end."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, TopicPartition


@dataclass(frozen=True)
class Seen:
    """One record as read back from the broker."""

    partition: int
    offset: int
    key: str
    headers: dict[str, str]
    value: bytes


async def read_topic(
    bootstrap: str,
    topic: str,
    *,
    until: Callable[[list[Seen]], bool],
    timeout: float = 60.0,  # noqa: ASYNC109
) -> list[Seen]:
    """Read `topic` from the beginning (no group) until `until(records)` holds."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    seen: list[Seen] = []
    try:
        deadline = time.monotonic() + timeout
        while True:
            # A consumer without a group keeps metadata only for topics it was told about.
            cluster = await consumer._client.fetch_all_metadata()
            partitions = cluster.partitions_for_topic(topic)
            if partitions:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"topic {topic} does not exist")
            await asyncio.sleep(0.1)
        parts = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        while not until(seen):
            if time.monotonic() > deadline:
                raise TimeoutError(f"read {len(seen)} records from {topic}, condition not met")
            batches = await consumer.getmany(timeout_ms=200)
            for records in batches.values():
                for r in records:
                    seen.append(
                        Seen(
                            partition=r.partition,
                            offset=r.offset,
                            key=(r.key or b"").decode(),
                            headers={k: v.decode() for k, v in r.headers},
                            value=r.value or b"",
                        )
                    )
    finally:
        await consumer.stop()
    return seen


async def eventually(
    check: Callable[[], object], timeout: float = 60.0, interval: float = 0.05
) -> None:
    """Wait until an async `check()` returns truthy; fails with the last value otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        value = await result if asyncio.iscoroutine(result) else result
        if value:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s (last: {value!r})")
        await asyncio.sleep(interval)
