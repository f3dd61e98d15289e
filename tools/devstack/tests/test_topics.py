"""ensure_topics: partition counts, dead-letter topics, idempotence."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest_asyncio

from contracts.registry import REGISTRY, dlq_topic
from devstack.brokers import TansuBroker
from devstack.topics import ensure_topics, registry_topics


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def tansu() -> AsyncIterator[str]:
    async with TansuBroker(port=19095) as broker:
        yield broker.bootstrap_servers


async def test_explicit_topics_get_their_partition_counts(tansu: str) -> None:
    created = await ensure_topics(
        tansu, prefix="t1.", names_and_partitions=[("one", 1), ("four", 4), ("six", 6)]
    )
    assert created == {"t1.one": 1, "t1.four": 4, "t1.six": 6}


async def test_creating_again_is_a_no_op(tansu: str) -> None:
    wanted = [("again", 2)]
    assert await ensure_topics(tansu, prefix="t2.", names_and_partitions=wanted) == {"t2.again": 2}
    assert await ensure_topics(tansu, prefix="t2.", names_and_partitions=wanted) == {"t2.again": 2}
    # An existing topic is left as it is, and the caller sees its real partition count.
    assert await ensure_topics(tansu, prefix="t2.", names_and_partitions=[("again", 5)]) == {
        "t2.again": 2
    }


async def test_the_registry_topics_and_their_dead_letter_topics(tansu: str) -> None:
    created = await ensure_topics(tansu, prefix="t3.")
    for entry in REGISTRY:
        assert created[f"t3.{entry.topic}"] == entry.partitions
        assert created[f"t3.{dlq_topic(entry.topic)}"] == entry.partitions
    assert len(created) == 2 * len({entry.topic for entry in REGISTRY})


def test_registry_topics_take_the_largest_count_of_a_topics_versions() -> None:
    topics = dict(registry_topics())
    for entry in REGISTRY:
        assert topics[entry.topic] >= entry.partitions
        assert topics[entry.topic + ".dlq"] == topics[entry.topic]


async def test_nothing_to_create() -> None:
    assert await ensure_topics("127.0.0.1:1", names_and_partitions=[]) == {}
