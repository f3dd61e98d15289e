"""Optional review of a triage by a language model behind an OpenAI-compatible chat API.

Off unless `TRIAGE_LLM_URL` is set; nothing here downloads or runs a model. The model may
only *raise* the urgency or add findings from the rule set's own concept list: its answer
must be a JSON object of a fixed shape (validated), and anything else — malformed JSON,
an unknown urgency, a timeout, a server error — is ignored and the rules' result stands.
The caller applies the opinion with `domain.raise_urgency`, which never lowers anything.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from contracts.triage import Urgency
from servicekit.logging import get_logger

log = get_logger(__name__)

_SYSTEM = (
    "You review a patient's symptom description for a nurse triage service. Reply with one "
    'JSON object only: {"urgency": "emergency|urgent|routine|self-care", "concepts": '
    '[ids from the list], "reason": "one sentence"}. Urgency is how soon the patient must be '
    "seen. Choose concepts only from this list: "
)


class Opinion(BaseModel):
    """The model's answer, validated strictly."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    urgency: Urgency
    concepts: list[str] = Field(default_factory=list, max_length=20)
    reason: str = Field(default="", max_length=500)


class ModelReviewer:
    """Calls the chat endpoint; returns None whenever the answer is not usable."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        url: str,
        model: str,
        api_key: str,
        timeout_s: float,
        concept_ids: Iterable[str],
    ) -> None:
        self._http = http
        self._url = url.rstrip("/") + "/chat/completions"
        self._model = model
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._timeout = timeout_s
        self._concepts = sorted(concept_ids)

    async def review(
        self, text: str, age_years: float, sex: str, rules_urgency: Urgency
    ) -> Opinion | None:
        """The model's opinion on the complaint, or None (error, timeout, invalid answer)."""
        body = {
            "model": self._model,
            "temperature": 0,
            "response_format": {"type": "json_object"},
            "messages": [
                {"role": "system", "content": _SYSTEM + ", ".join(self._concepts)},
                {
                    "role": "user",
                    "content": json.dumps(
                        {
                            "age_years": age_years,
                            "sex": sex,
                            "text": text,
                            "rules_urgency": rules_urgency.value,
                        }
                    ),
                },
            ],
        }
        try:
            response = await self._http.post(
                self._url, json=body, headers=self._headers, timeout=self._timeout
            )
            response.raise_for_status()
            content = response.json()["choices"][0]["message"]["content"]
            opinion = Opinion.model_validate(json.loads(content))
        except (
            httpx.HTTPError,
            KeyError,
            IndexError,
            TypeError,
            ValueError,
            ValidationError,
        ) as exc:
            # No PHI in the log: only the kind of failure.
            log.warning("triage.model_review_failed", error=type(exc).__name__)
            return None
        known = [c for c in opinion.concepts if c in self._concepts]
        return opinion.model_copy(update={"concepts": known})
