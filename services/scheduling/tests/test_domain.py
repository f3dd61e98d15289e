"""Appointment state rules."""

from __future__ import annotations

import pytest

from contracts.appointment import AppointmentStatus as S
from scheduling.domain import can_transition


@pytest.mark.parametrize(
    ("current", "new"),
    [
        (S.PENDING, S.BOOKED),
        (S.PENDING, S.REJECTED),
        (S.BOOKED, S.CANCELLED),
        (S.BOOKED, S.FULFILLED),
        (S.ARRIVED, S.FULFILLED),
    ],
)
def test_allowed_transitions(current: S, new: S) -> None:
    assert can_transition(current, new)


@pytest.mark.parametrize(
    ("current", "new"),
    [
        (S.CANCELLED, S.BOOKED),
        (S.FULFILLED, S.CANCELLED),
        (S.REJECTED, S.BOOKED),
        (S.BOOKED, S.PENDING),
        (S.BOOKED, S.BOOKED),
    ],
)
def test_terminal_states_and_going_back_are_refused(current: S, new: S) -> None:
    assert not can_transition(current, new)
