"""Rules of secure messaging, free of I/O: routing, limits, attachment checks, read state."""

from __future__ import annotations

import base64
import binascii
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from contracts.triage import Urgency

SUBJECT_MAX = 200
BODY_MAX = 10_000
FALLBACK_SUBJECT = "Message from the patient"
TRIAGE_SUBJECT = "Symptom check"
# What the patient is told at once when the emergency check flags the message (the triage
# service's own advice is shown when it gives one).
EMERGENCY_ADVICE = (
    "This may be an emergency. Call emergency services (911) now or go to the nearest "
    "emergency room. Do not wait for a reply to this message."
)
UNCHECKED_NOTE = (
    "We could not check your message for urgent symptoms just now; a member of the care "
    "team will review it. If this is an emergency, call emergency services (911) now."
)
# Images and PDF only: what a clinician's viewer opens safely, by their magic bytes.
_SIGNATURES: dict[str, tuple[bytes, ...]] = {
    "image/png": (b"\x89PNG\r\n\x1a\n",),
    "image/jpeg": (b"\xff\xd8\xff",),
    "image/gif": (b"GIF87a", b"GIF89a"),
    "application/pdf": (b"%PDF-",),
}
ATTACHMENT_TYPES = frozenset(_SIGNATURES)
_WORD = re.compile(r"[a-z0-9]+")


class RoutingError(ValueError):
    """The routing rules file is invalid (start-up fails with this message)."""


@dataclass(frozen=True)
class Topic:
    """A category a patient picks when starting a conversation."""

    code: str
    label: str
    pool: str
    keywords: bool


@dataclass(frozen=True)
class Route:
    """Where a message went and why (stored with the thread, shown to the patient)."""

    pool: str
    display: str
    rules_version: str


@dataclass(frozen=True)
class RoutingRules:
    """The routing rules of one version of the data file."""

    version: str
    default_pool: str
    emergency_pool: str
    pools: Mapping[str, str]
    topics: tuple[Topic, ...]
    keywords: tuple[tuple[str, frozenset[str]], ...]
    triage: Mapping[Urgency, str]

    def route(self, pool: str) -> Route:
        """The route to a pool, with its display name."""
        return Route(pool=pool, display=self.pools.get(pool, pool), rules_version=self.version)

    def topic(self, code: str | None) -> Topic | None:
        """A topic by code (None when unknown or not given)."""
        return next((t for t in self.topics if t.code == code), None)

    def route_message(self, topic_code: str | None, subject: str, body: str) -> Route:
        """The pool of a new conversation: the chosen topic's, or keywords when the topic
        allows them (or none was chosen), else the default."""
        topic = self.topic(topic_code)
        if topic is not None and not topic.keywords:
            return self.route(topic.pool)
        words = set(_WORD.findall(f"{subject}\n{body}".lower()))
        for pool, rule_words in self.keywords:
            if words & rule_words:
                return self.route(pool)
        return self.route(topic.pool if topic is not None else self.default_pool)

    def route_triage(self, urgency: Urgency, recommended_pool: str | None) -> Route:
        """The pool of a triage summary: by disposition; routine work may follow the
        triage service's recommendation when it names a known pool."""
        pool = self.triage[urgency]
        if urgency in (Urgency.ROUTINE, Urgency.SELF_CARE) and recommended_pool in self.pools:
            pool = recommended_pool or pool
        return self.route(pool)


def _str(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise RoutingError(f"{what} must be a non-empty string")
    return value.strip()


def parse_rules(data: Any) -> RoutingRules:
    """Validated routing rules from the data file's content (parsed YAML)."""
    if not isinstance(data, dict):
        raise RoutingError("the routing file must be a mapping")
    version = _str(data.get("version"), "version")
    pools_raw = data.get("pools")
    if not isinstance(pools_raw, dict) or not pools_raw:
        raise RoutingError("pools must map pool names to {display: ...}")
    pools = {
        _str(name, "pool name"): _str((spec or {}).get("display"), f"pools.{name}.display")
        for name, spec in pools_raw.items()
    }

    def pool(value: Any, where: str) -> str:
        name = _str(value, where)
        if name not in pools:
            raise RoutingError(f"{where} names pool {name!r}, which is not under pools")
        return name

    topics: list[Topic] = []
    for i, raw in enumerate(data.get("topics") or []):
        where = f"topics[{i}]"
        if not isinstance(raw, dict):
            raise RoutingError(f"{where} must be a mapping")
        topics.append(
            Topic(
                code=_str(raw.get("code"), f"{where}.code"),
                label=_str(raw.get("label"), f"{where}.label"),
                pool=pool(raw.get("pool"), f"{where}.pool"),
                keywords=bool(raw.get("keywords", False)),
            )
        )
    if not topics or len({t.code for t in topics}) != len(topics):
        raise RoutingError("topics must be a non-empty list with unique codes")
    keywords: list[tuple[str, frozenset[str]]] = []
    for i, raw in enumerate(data.get("keywords") or []):
        where = f"keywords[{i}]"
        words = raw.get("words") if isinstance(raw, dict) else None
        if not isinstance(words, list) or not words:
            raise RoutingError(f"{where}.words must be a non-empty list")
        keywords.append(
            (pool(raw.get("pool"), f"{where}.pool"), frozenset(str(w).lower() for w in words))
        )
    triage_raw = data.get("triage")
    if not isinstance(triage_raw, dict):
        raise RoutingError("triage must map every disposition to a pool")
    triage: dict[Urgency, str] = {}
    for urgency in Urgency:
        triage[urgency] = pool(triage_raw.get(urgency.value), f"triage.{urgency.value}")
    return RoutingRules(
        version=version,
        default_pool=pool(data.get("default_pool"), "default_pool"),
        emergency_pool=pool(data.get("emergency_pool"), "emergency_pool"),
        pools=pools,
        topics=tuple(topics),
        keywords=tuple(keywords),
        triage=triage,
    )


def reply_subject(thread_subject: str | None) -> str:
    """The subject a reply carries: its thread's (a clinician-started thread has none)."""
    return (thread_subject or FALLBACK_SUBJECT)[:SUBJECT_MAX]


def answer_time(sent_at: datetime, answered_at: datetime | None) -> datetime:
    """When an answer shows in its thread: after the message it answers. An EHR may record
    `sent` to the second only, or run a clock behind ours, so by its own time alone an
    answer could sort before (or tie with) the message it answers; it is then placed one
    microsecond after it, the smallest step the database keeps."""
    if answered_at is None or sent_at > answered_at:
        return sent_at
    return answered_at + timedelta(microseconds=1)


# -- limits --------------------------------------------------------------------------------


def retry_after(
    sent_in_window: list[datetime], limit: int, window: timedelta, now: datetime
) -> int | None:
    """Seconds until the patient may send again (None: they may send now). `sent_in_window`
    are the send times within the window, oldest first."""
    if len(sent_in_window) < limit:
        return None
    # The oldest send that must leave the window before one more fits.
    frees_at = sent_in_window[len(sent_in_window) - limit] + window
    return max(1, math.ceil((frees_at - now).total_seconds()))


class AttachmentRefused(ValueError):
    """An attachment breaks a rule (type, size, content); the message says which."""


def check_attachment(content_type: str, title: str, data_base64: str, max_bytes: int) -> bytes:
    """The attachment's bytes, if it is an allowed type, within the size limit, and its
    content really is of the declared type."""
    if content_type not in ATTACHMENT_TYPES:
        allowed = ", ".join(sorted(ATTACHMENT_TYPES))
        raise AttachmentRefused(f"{title!r}: type {content_type!r} is not allowed ({allowed})")
    # Cheap bound before decoding: base64 is 4 characters per 3 bytes.
    if len(data_base64) > (max_bytes + 2) // 3 * 4 + 4:
        raise AttachmentRefused(f"{title!r} is larger than {max_bytes} bytes")
    try:
        data = base64.b64decode(data_base64, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise AttachmentRefused(f"{title!r}: data is not valid base64") from exc
    if not data:
        raise AttachmentRefused(f"{title!r} is empty")
    if len(data) > max_bytes:
        raise AttachmentRefused(f"{title!r} is larger than {max_bytes} bytes")
    if not data.startswith(_SIGNATURES[content_type]):
        raise AttachmentRefused(f"{title!r}: the content is not {content_type}")
    return data
