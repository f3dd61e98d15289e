"""Create the registry's topics, each with its dead-letter topic, before anything uses them.

Brokers auto-create a topic on its first write with a default partition count (1 on Tansu),
which would silently break per-patient ordering assumptions and consumer parallelism; so the
stack and the tests create every topic explicitly first.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError, for_code


def registry_topics() -> list[tuple[str, int]]:
    """Every topic of `contracts.registry.REGISTRY` with its partition count, plus its DLQ.

    Several versions of one event type share a topic; it gets the largest partition count
    any of them asks for. A dead-letter topic has as many partitions as its topic.
    """
    from contracts.registry import REGISTRY, dlq_topic

    partitions: dict[str, int] = {}
    for entry in REGISTRY:
        partitions[entry.topic] = max(entry.partitions, partitions.get(entry.topic, 0))
    result: list[tuple[str, int]] = []
    for topic, count in partitions.items():
        result.append((topic, count))
        result.append((dlq_topic(topic), count))
    return result


async def ensure_topics(
    bootstrap: str,
    prefix: str = "",
    names_and_partitions: Iterable[tuple[str, int]] | None = None,
) -> dict[str, int]:
    """Create topics (named `prefix + name`) with their partition counts, idempotently.

    Without `names_and_partitions` the topic registry is used, with a `<topic>.dlq` for every
    topic; an explicit list is created exactly as given. Topics that already exist are left
    as they are. Returns the partition count each topic has on the broker afterwards, so a
    caller can tell when an existing topic has fewer partitions than asked for.
    """
    wanted = list(registry_topics() if names_and_partitions is None else names_and_partitions)
    named = {f"{prefix}{name}": partitions for name, partitions in wanted}
    if not named:
        return {}
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=30000)
    await admin.start()
    try:
        response = await admin.create_topics(
            [NewTopic(name, partitions, 1) for name, partitions in named.items()]
        )
        failures = []
        for topic_error in response.to_object()["topic_errors"]:
            code = topic_error["error_code"]
            if code in (0, TopicAlreadyExistsError.errno):
                continue
            error = for_code(code)
            failures.append(
                f"{topic_error['topic']}: {error.__name__} {topic_error['error_message']}"
            )
        if failures:
            raise RuntimeError("could not create topics: " + "; ".join(failures))
        counts = await _described(admin, list(named))
    finally:
        await admin.close()
    return counts


async def _described(admin: AIOKafkaAdminClient, names: list[str]) -> dict[str, int]:
    """Partition counts as the broker describes them. Right after a create, Apache Kafka may
    still describe a topic as unknown or without partitions until its metadata has spread:
    asked again until every topic has some (bounded; then as described)."""
    deadline = time.monotonic() + 30.0
    while True:
        described = await admin.describe_topics(names)
        counts = {entry["topic"]: len(entry["partitions"]) for entry in described}
        settled = all(
            entry["error_code"] == 0 and entry["partitions"] for entry in described
        ) and set(counts) >= set(names)
        if settled or time.monotonic() > deadline:
            return counts
        await asyncio.sleep(0.1)
