"""Use cases of secure messaging: sending, reading, filing the EHR's side, re-encryption.

The HTTP routes (`api.py`) and the event handlers (`handlers.py`) only translate into calls
here. Each use case has one transaction boundary; the emergency check (HTTP to triage) runs
before the transaction opens, so no database transaction waits on another service.

Free text (subjects, bodies, attachment names and bytes, pool summaries) is encrypted with
the service's `Cipher` before it reaches a session and decrypted on the way out; associated
data binds each envelope to its table, column and row id.
"""

from __future__ import annotations

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
from servicekit.consumer import UnitOfWork, running_deps

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
    "messaging_for",
]


class Messaging(Sending, EhrSide, Rotation):
    """The messaging use cases of one running service."""


def messaging_for(uow: UnitOfWork) -> Messaging:
    """The use cases of the service handling this unit of work (its composition root's
    `deps`); none while it starts or stops: the event waits in Kafka."""
    return running_deps(uow.deps, Messaging)
