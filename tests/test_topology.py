"""The topology, from the services' own definitions: every event a service consumes has a
producer, and every event a service publishes has a consumer (or is declared as leaving
the system). The definitions are what the services run with, so this cannot drift."""

from __future__ import annotations

from collections import defaultdict

from devstack.asyncapi import built_services

# Published for parties outside these six services (none today).
EXTERNAL_CONSUMERS: frozenset[str] = frozenset()


def _topology() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    publishers: dict[str, set[str]] = defaultdict(set)
    consumers: dict[str, set[str]] = defaultdict(set)
    for service in built_services():
        name = service.settings.service_name
        for event_type in service.definition.publishes:
            publishers[event_type].add(name)
        for subscription in service.runtime.router.subscriptions:
            consumers[subscription.event_type].add(name)
    return publishers, consumers


def test_every_consumed_event_has_a_producer() -> None:
    publishers, consumers = _topology()
    orphans = {event: sorted(by) for event, by in consumers.items() if not publishers.get(event)}
    assert orphans == {}, f"consumed but never published: {orphans}"


def test_every_published_event_has_a_consumer() -> None:
    publishers, consumers = _topology()
    unheard = {
        event: sorted(by)
        for event, by in publishers.items()
        if not consumers.get(event) and event not in EXTERNAL_CONSUMERS
    }
    assert unheard == {}, f"published but never consumed: {unheard}"
