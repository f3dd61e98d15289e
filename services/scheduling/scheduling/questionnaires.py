"""Intake Questionnaires, read from the EHR through the ehr-connector (the only service that
speaks FHIR) and kept: a `url|version` names one fixed content, so a cached copy never
goes stale."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import httpx
from sqlalchemy.exc import IntegrityError

from scheduling import store
from scheduling.service import SchedulingError
from servicekit.db import Database
from servicekit.logging import get_logger

log = get_logger(__name__)


class QuestionnaireSource:
    """Questionnaires by canonical URL|version: the database first, else the connector."""

    def __init__(self, db: Database, client: httpx.AsyncClient, connector_url: str) -> None:
        self.db = db
        self.client = client
        self.connector_url = connector_url.rstrip("/")

    async def get(self, canonical: str) -> dict[str, Any]:
        """The Questionnaire resource; `SchedulingError` 503 when the EHR cannot give it."""
        async with self.db.sessions() as session:
            cached = await store.get_questionnaire(session, canonical)
        if cached is not None:
            resource: dict[str, Any] = json.loads(cached.resource)
            return resource
        url, _, version = canonical.partition("|")
        params = {"url": url, **({"version": version} if version else {})}
        try:
            response = await self.client.get(
                f"{self.connector_url}/ehr/questionnaires", params=params
            )
        except httpx.HTTPError as exc:
            log.warning("scheduling.questionnaire_unavailable", error=type(exc).__name__)
            raise SchedulingError(
                503, "The intake form cannot be loaded from the clinic right now; try again later."
            ) from exc
        if response.status_code != 200:
            log.warning("scheduling.questionnaire_unavailable", status=response.status_code)
            raise SchedulingError(
                503, "The intake form cannot be loaded from the clinic right now; try again later."
            )
        resource = response.json()
        if resource.get("resourceType") != "Questionnaire":
            raise SchedulingError(503, "The clinic's intake form could not be read.")
        try:
            async with self.db.transaction() as session:
                session.add(
                    store.Questionnaire(
                        canonical=canonical,
                        resource=json.dumps(resource),
                        fetched_at=datetime.now(UTC),
                    )
                )
        except IntegrityError:
            pass  # a concurrent request stored the same version
        return resource
