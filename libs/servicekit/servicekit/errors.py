"""Exceptions that tell the consumer loop how to treat a failure."""

from __future__ import annotations


class PermanentError(Exception):
    """Retrying cannot help (invalid data, a state the target forbids): dead-letter at once."""


class DependencyUnavailable(Exception):
    """A dependency is down (e.g. the EHR's circuit is open).

    The message stays in Kafka: the consumer waits and retries without counting attempts
    and without dead-lettering, so a long outage drains in order once it is over.
    """


def describe(exc: BaseException) -> str:
    """An error description without the offending input (inputs may carry PHI)."""
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        parts = [
            f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}"
            for err in exc.errors(include_input=False, include_url=False)
        ]
        return f"ValidationError: {'; '.join(parts)}"[:2000]
    return f"{type(exc).__name__}: {exc}"[:2000]
