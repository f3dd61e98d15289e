"""Structured JSON logging that never carries PHI.

Every record goes through `drop_phi`, which removes values under keys that name personal
data and masks free text that looks like a name, a birth date or an external identifier.
Only internal ids (UUIDs, FHIR logical ids we minted) and operational facts survive.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Mapping, MutableMapping
from http import HTTPStatus
from typing import Any

import structlog
from opentelemetry import trace

# Keys whose values are personal data by definition. Matching is on normalised key names
# (lower-case, without `_`/`-`), so `birthDate`, `birth_date` and `BIRTH-DATE` all match.
PHI_KEYS = frozenset(
    {
        "name",
        "names",
        "given",
        "family",
        "firstname",
        "lastname",
        "fullname",
        "patientname",
        "birthdate",
        "dob",
        "dateofbirth",
        "address",
        "telecom",
        "phone",
        "email",
        "ssn",
        "mrn",
        "identifier",
        "identifiers",
        "text",
        "body",
        "note",
        "notes",
        "comment",
        "content",
        "answer",
        "answers",
        "message",
        "reason",
        "description",
        "symptoms",
        "payload",
        "resource",
    }
)
REDACTED = "[redacted]"

_DATE = re.compile(r"\b(19|20)\d\d-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])\b")
_DATE_US = re.compile(r"\b(0?[1-9]|1[0-2])/(0?[1-9]|[12]\d|3[01])/(19|20)\d\d\b")
_EMAIL = re.compile(r"[\w.+-]+@[\w-]+\.[\w.-]+")
# A phone number stands alone: not the digits inside an id, a version or a timestamp.
_PHONE = re.compile(r"(?<![\w.:/-])\+?\d[\d ()-]{7,}\d(?![\w.:/-])")
# Two or more capitalised words in a row ("Peter James Chalmers") read as a person's name.
_PERSON_NAME = re.compile(r"\b[A-Z][a-z]+(?:[ '-][A-Z][a-z]+)+\b")
# A birth date asked for in a query string (`birthdate=ge1974-12-25`), whatever its form.
_BIRTHDATE_PARAM = re.compile(r"(?i)\b(birth-?_?date|dob)=[^&\s\"']*")
# Spans that are never PHI and that the patterns above would mangle: UUIDs, instants with a
# time (FHIR `_lastUpdated=gt2026-...`, log times; a birth date has no time of day), FHIR
# references (`Patient/abc-123`) and HTTP status lines (`404 Not Found`).
_HTTP_PHRASES = "|".join(
    sorted((re.escape(s.phrase) for s in HTTPStatus if " " in s.phrase), key=len, reverse=True)
)
_SAFE_SPAN = re.compile(
    r"\b[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\b"
    r"|(?<!\d)\d{4}-\d\d-\d\dT\d\d:\d\d(?::\d\d(?:\.\d+)?)?(?:Z|[+-]\d\d:?\d\d)?"
    r"|\b[A-Z][A-Za-z]+/[A-Za-z0-9.-]{1,64}(?:/_history/[A-Za-z0-9.-]{1,64})?"
    rf"|\b(?:[1-5]\d\d )?(?:{_HTTP_PHRASES})\b"
)
# A value under a key like `fhir_id` or `subscription_id` that is one FHIR id token is an id
# (external identifiers, the PHI kind, travel under `identifier`/`mrn` and are dropped).
_ID_VALUE = re.compile(r"[A-Za-z0-9.-]{1,64}")
_SAFE_KEYS = frozenset({"event", "level", "timestamp", "logger", "trace_id", "span_id"})


def _normalise(key: str) -> str:
    return key.lower().replace("_", "").replace("-", "")


def _scrub_piece(value: str) -> str:
    value = _DATE.sub(REDACTED, value)
    value = _DATE_US.sub(REDACTED, value)
    value = _EMAIL.sub(REDACTED, value)
    value = _PHONE.sub(REDACTED, value)
    return _PERSON_NAME.sub(REDACTED, value)


def scrub_text(value: str) -> str:
    """Mask substrings of free text that look like names, dates, e-mails or phone numbers;
    UUIDs, instants, FHIR references and HTTP status lines are left as they are."""
    value = _BIRTHDATE_PARAM.sub(lambda m: f"{m.group(1)}={REDACTED}", value)
    out: list[str] = []
    last = 0
    for safe in _SAFE_SPAN.finditer(value):
        out.append(_scrub_piece(value[last : safe.start()]))
        out.append(safe.group())
        last = safe.end()
    out.append(_scrub_piece(value[last:]))
    return "".join(out)


def _is_id_key(key: str) -> bool:
    return key.lower().endswith(("_id", "id")) and _normalise(key) not in PHI_KEYS


def _scrub_field(key: str, value: Any) -> Any:
    if _normalise(key) in PHI_KEYS:
        return REDACTED
    if isinstance(value, str) and _is_id_key(key) and _ID_VALUE.fullmatch(value):
        return value
    return scrub(value)


def scrub(value: Any) -> Any:
    """Return `value` with PHI keys dropped and PHI-looking text masked, recursively."""
    if isinstance(value, Mapping):
        return {k: _scrub_field(str(k), v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [scrub(v) for v in value]
    if isinstance(value, str):
        return scrub_text(value)
    if isinstance(value, int | float | bool) or value is None:
        return value
    return scrub_text(str(value))


def drop_phi(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: the last line of defence against PHI in logs."""
    for key in list(event_dict):
        if key in _SAFE_KEYS and key != "event":
            continue
        event_dict[key] = _scrub_field(key, event_dict[key])
    return event_dict


def add_trace_ids(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: attach the current OpenTelemetry trace and span ids."""
    ctx = trace.get_current_span().get_span_context()
    if ctx.is_valid:
        event_dict["trace_id"] = format(ctx.trace_id, "032x")
        event_dict["span_id"] = format(ctx.span_id, "016x")
    return event_dict


def configure_logging(service: str, level: str = "INFO", fmt: str = "json") -> None:
    """Route structlog and the standard library through one JSON renderer on stdout."""
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        add_trace_ids,
        structlog.processors.format_exc_info,
        drop_phi,
    ]
    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=False)
        if fmt == "console"
        else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            renderer,
        ],
    )
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    structlog.contextvars.bind_contextvars(service=service)
    # Libraries that brought their own handlers (uvicorn's coloured console, FastStream's
    # coloured stdout/stderr) would print lines of their own format: every record goes
    # through the one handler above instead.
    for name in list(logging.root.manager.loggerDict):
        _take_over(logging.getLogger(name))
    # aiokafka logs whole records at DEBUG and chatty reconnects at INFO.
    logging.getLogger("aiokafka").setLevel(max(logging.WARNING, root.level))
    # One line per HTTP request (probes included) only when debugging: served (uvicorn)
    # and sent (httpx logs every call at INFO; the gateway makes several per request).
    access = logging.INFO if root.level <= logging.DEBUG else logging.WARNING
    logging.getLogger("uvicorn.access").setLevel(access)
    logging.getLogger("httpx").setLevel(access)


def _take_over(logger: logging.Logger) -> None:
    """Drop a library logger's own console handlers; its records then reach the root's."""
    # Exactly StreamHandler: files and other sinks (its subclasses) are left alone.
    console = [h for h in logger.handlers if type(h) is logging.StreamHandler]
    for handler in console:
        logger.removeHandler(handler)
    if console:
        logger.propagate = True


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    """A structlog logger; use keyword arguments for facts, never PHI."""
    logger: structlog.stdlib.BoundLogger = structlog.get_logger(name)
    return logger
