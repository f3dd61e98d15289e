"""Use cases of secure messaging: sending, reading, filing the EHR's side, re-encryption.

The HTTP routes (`api.py`) and the event handlers (`handlers.py`) only translate into calls
here. Each use case has one transaction boundary; the emergency check (HTTP to triage) runs
before the transaction opens, so no database transaction waits on another service.

Free text (subjects, bodies, attachment names and bytes, pool summaries) is encrypted with
the service's `Cipher` before it reaches a session and decrypted on the way out; associated
data binds each envelope to its table, column and row id.
"""

from __future__ import annotations

from weakref import WeakKeyDictionary

from messaging.service.base import (
    AttachmentView,
    MessageView,
    NewAttachment,
    NotFound,
    PoolItemView,
    Prepared,
    RateLimited,
    Sent,
    ThreadView,
    TooLong,
    UnknownTopic,
)
from messaging.service.ehr_side import EhrSide
from messaging.service.rotation import Rotation
from messaging.service.sending import Sending
from servicekit.consumer import UnitOfWork
from servicekit.errors import DependencyUnavailable
from servicekit.outbox import Outbox

__all__ = [
    "AttachmentView",
    "MessageView",
    "Messaging",
    "NewAttachment",
    "NotFound",
    "PoolItemView",
    "Prepared",
    "RateLimited",
    "Sent",
    "ThreadView",
    "TooLong",
    "UnknownTopic",
    "attach",
    "detach",
    "messaging_for",
]


class Messaging(Sending, EhrSide, Rotation):
    """The messaging use cases of one running service."""


# -- the running service's use cases, for the handlers ----------------------------------

_running: WeakKeyDictionary[Outbox, Messaging] = WeakKeyDictionary()


def attach(outbox: Outbox, messaging: Messaging) -> None:
    """Make `messaging` what the handlers of the service owning `outbox` use."""
    _running[outbox] = messaging


def detach(outbox: Outbox) -> None:
    """Forget the use cases of a stopped service."""
    _running.pop(outbox, None)


def messaging_for(uow: UnitOfWork) -> Messaging:
    """The use cases of the service handling this unit of work."""
    found = _running.get(uow.outbox)
    if found is None:
        # Only while starting or stopping: the event waits in Kafka.
        raise DependencyUnavailable("the messaging service is not running")
    return found
