"""The triage service's emergency check, over HTTP (`POST {triage_url}/emergency-check`).

Contract (owned by triage): `{"text": "..."}` → `{"emergency": bool, "flags": [{"id": str,
...}], "advice": str | null, ...}`; messaging keeps the flags' ids. Every patient message
goes through it before it is stored.

Failure policy: a message is never refused because triage is down. When the check cannot
run (connection refused, timeout, 5xx, an answer that does not fit the contract) the
verdict is `checked=False`: the message is still stored and filed, flagged `needs_review`
(its pool item says so, and the EHR copy carries the flag), and the patient is told the
check did not run and to call emergency services if it is an emergency.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import httpx
from pydantic import BaseModel, ValidationError

from servicekit.logging import get_logger

log = get_logger(__name__)


class _Flag(BaseModel):
    id: str


class _Answer(BaseModel):
    emergency: bool
    flags: list[_Flag] = []
    advice: str | None = None


@dataclass(frozen=True)
class Verdict:
    """The outcome of the emergency check of one message."""

    checked: bool
    emergency: bool = False
    flags: list[str] = field(default_factory=list)
    advice: str | None = None


class EmergencyCheck:
    """Client of the triage service's emergency check (one per running service)."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client

    async def check(self, text: str) -> Verdict:
        """The verdict on a patient's text; `checked=False` when triage could not answer."""
        try:
            response = await self.client.post("/emergency-check", json={"text": text})
        except httpx.HTTPError as exc:
            log.warning("messaging.emergency_check_unavailable", error=type(exc).__name__)
            return Verdict(checked=False)
        if response.status_code != 200:
            log.warning("messaging.emergency_check_failed", status=response.status_code)
            return Verdict(checked=False)
        try:
            answer = _Answer.model_validate_json(response.content)
        except ValidationError:
            log.warning("messaging.emergency_check_malformed")
            return Verdict(checked=False)
        return Verdict(
            checked=True,
            emergency=answer.emergency,
            flags=[flag.id for flag in answer.flags],
            advice=answer.advice,
        )
