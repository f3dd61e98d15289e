"""The topology, from the services' own definitions (`devstack.topology`): every event a
service consumes has a producer, every event a service publishes has a consumer (or is
declared as leaving the system), and the README's and docs/design.md's topology tables are
the ones generated from those definitions. The definitions are what the services run
with, so the tables cannot drift unnoticed."""

from __future__ import annotations

from pathlib import Path

import pytest

from devstack import topology


def test_every_consumed_event_has_a_producer() -> None:
    orphans = topology.topology().unpublished()
    assert orphans == {}, f"consumed but never published: {orphans}"


def test_every_published_event_has_a_consumer() -> None:
    unheard = topology.topology().unheard()
    assert unheard == {}, f"published but never consumed: {unheard}"


@pytest.mark.parametrize("doc", topology.DOCS, ids=lambda p: p.name)
def test_the_topology_table_is_the_generated_one(doc: Path) -> None:
    committed = doc.read_text(encoding="utf-8")
    generated = topology.rewrite(committed, topology.table(topology.topology()), doc)
    assert committed == generated, "run: python -m devstack.topology"


def test_a_consumer_without_a_producer_is_found() -> None:
    found = topology.Topology()
    found.consumers["appointment.rescheduled"].add(("ehr-connector", "reschedule_appointment"))
    found.publishers["appointment.updated"].add("ehr-connector")
    assert found.unpublished() == {"appointment.rescheduled": ["ehr-connector"]}
    assert found.unheard() == {"appointment.updated": ["ehr-connector"]}
