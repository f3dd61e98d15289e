"""An idle outbox relay polls less and less often, and is back at its quick pace once
woken (its own commits wake it, so events never wait for the longer poll)."""

from __future__ import annotations

from servicekit.outbox import next_idle_wait


def test_the_idle_poll_doubles_up_to_its_maximum() -> None:
    waits = [0.2]
    for _ in range(5):
        waits.append(next_idle_wait(waits[-1], woken=False, base_s=0.2, max_s=1.0))
    assert waits == [0.2, 0.4, 0.8, 1.0, 1.0, 1.0]


def test_a_wake_up_brings_the_quick_pace_back() -> None:
    assert next_idle_wait(1.0, woken=True, base_s=0.2, max_s=1.0) == 0.2


def test_a_maximum_below_the_base_never_makes_the_poll_quicker() -> None:
    assert next_idle_wait(30.0, woken=False, base_s=30.0, max_s=1.0) == 30.0
