"""Appointment state rules, free of I/O."""

from __future__ import annotations

from contracts.appointment import AppointmentStatus

# What the EHR may move a portal appointment to, from each state. Terminal states never
# change again; a late `booked` confirmation must not resurrect a cancelled appointment.
_ALLOWED: dict[AppointmentStatus, frozenset[AppointmentStatus]] = {
    AppointmentStatus.PROPOSED: frozenset(AppointmentStatus) - {AppointmentStatus.PROPOSED},
    AppointmentStatus.PENDING: frozenset(AppointmentStatus)
    - {AppointmentStatus.PROPOSED, AppointmentStatus.PENDING},
    AppointmentStatus.BOOKED: frozenset(
        {
            AppointmentStatus.ARRIVED,
            AppointmentStatus.CHECKED_IN,
            AppointmentStatus.FULFILLED,
            AppointmentStatus.CANCELLED,
            AppointmentStatus.NOSHOW,
            AppointmentStatus.ENTERED_IN_ERROR,
        }
    ),
    AppointmentStatus.ARRIVED: frozenset(
        {
            AppointmentStatus.CHECKED_IN,
            AppointmentStatus.FULFILLED,
            AppointmentStatus.ENTERED_IN_ERROR,
        }
    ),
    AppointmentStatus.CHECKED_IN: frozenset(
        {AppointmentStatus.FULFILLED, AppointmentStatus.ENTERED_IN_ERROR}
    ),
    AppointmentStatus.WAITLIST: frozenset(AppointmentStatus) - {AppointmentStatus.WAITLIST},
}
TERMINAL = frozenset(
    {
        AppointmentStatus.FULFILLED,
        AppointmentStatus.CANCELLED,
        AppointmentStatus.NOSHOW,
        AppointmentStatus.ENTERED_IN_ERROR,
        AppointmentStatus.REJECTED,
    }
)


def can_transition(current: AppointmentStatus, new: AppointmentStatus) -> bool:
    """Whether an appointment in `current` may move to `new` (same state: no change)."""
    if current in TERMINAL:
        return False
    return new in _ALLOWED.get(current, frozenset())


def cancellable(current: AppointmentStatus) -> bool:
    """Whether the patient may still cancel an appointment in `current`."""
    return can_transition(current, AppointmentStatus.CANCELLED)
