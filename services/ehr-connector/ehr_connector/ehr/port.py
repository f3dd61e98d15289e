"""What the connector needs from an EHR, independent of how it is reached.

Resources cross this port as FHIR JSON (`dict`, FHIR's own camelCase names): the outbound
mapping builds them with the R4B models and the inbound side reads them as the EHR sent
them. `ehr_connector.ehr.fhir_client.FhirClient` is the adapter for FHIR R4 REST servers;
tests may wrap it (a decorator that interferes between calls) but never replace the EHR.

Errors are the types of `ehr_connector.ehr.errors`: `EhrNotFound`/`EhrRejected` (permanent),
`EhrConflict` (409/412: re-read and decide), `EhrUnavailable`/`CircuitOpen` (wait in Kafka),
`EhrServerError` (bounded retries, then dead letter).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

FhirJson = dict[str, Any]
SearchParams = Mapping[str, str] | Sequence[tuple[str, str]]


@dataclass(frozen=True)
class Versioned:
    """A resource as the EHR holds it, with the version an `If-Match` can name."""

    resource: FhirJson

    @property
    def resource_type(self) -> str:
        """`resourceType` of the resource."""
        return str(self.resource["resourceType"])

    @property
    def id(self) -> str:
        """The EHR's logical id."""
        return str(self.resource["id"])

    @property
    def version_id(self) -> str:
        """`meta.versionId` ("" when the server keeps no versions)."""
        return str(self.resource.get("meta", {}).get("versionId", ""))

    @property
    def last_updated(self) -> datetime | None:
        """`meta.lastUpdated`, parsed."""
        raw = self.resource.get("meta", {}).get("lastUpdated")
        return datetime.fromisoformat(raw.replace("Z", "+00:00")) if raw else None

    @property
    def reference(self) -> str:
        """`Type/id`, for references to it."""
        return f"{self.resource_type}/{self.id}"


@dataclass(frozen=True)
class WriteResult(Versioned):
    """The outcome of a create or update: `created` is False when a conditional create
    matched an existing resource (which is then what `resource` holds)."""

    created: bool = False


@dataclass(frozen=True)
class SearchPage:
    """One page of a searchset Bundle."""

    bundle: FhirJson
    matches: list[FhirJson] = field(default_factory=list)
    included: list[FhirJson] = field(default_factory=list)
    total: int | None = None
    next_url: str | None = None


class EhrPort(Protocol):
    """The EHR operations the connector uses (outbound writes and inbound reads)."""

    async def capabilities(self) -> FhirJson:
        """The server's CapabilityStatement (`GET /metadata`); also the liveness probe."""
        ...

    async def read(self, resource_type: str, fhir_id: str) -> Versioned:
        """The current version of one resource."""
        ...

    async def search(
        self, resource_type: str, params: SearchParams, *, count: int | None = None
    ) -> SearchPage:
        """The first page of a search."""
        ...

    async def next_page(self, page: SearchPage) -> SearchPage | None:
        """The page after `page` (its `next` link), or None on the last page."""
        ...

    def pages(
        self, resource_type: str, params: SearchParams, *, count: int | None = None
    ) -> AsyncIterator[SearchPage]:
        """Every page of a search, in order."""
        ...

    async def everything(
        self,
        patient_fhir_id: str,
        *,
        since: datetime | None = None,
        types: Sequence[str] = (),
        count: int | None = None,
    ) -> SearchPage:
        """The first page of `Patient/<id>/$everything` (continue with `next_page`)."""
        ...

    async def create(self, resource: FhirJson, *, if_none_exist: str | None = None) -> WriteResult:
        """Create; with `if_none_exist` (a search query) only if nothing matches it."""
        ...

    async def update(self, resource: FhirJson, *, if_match: str | None = None) -> WriteResult:
        """Update `resource` (its `id` names it); with `if_match` (a version id) only if
        that is still the current version, else `EhrConflict`."""
        ...

    async def subscription_status(self, subscription_id: str) -> FhirJson:
        """`Subscription/<id>/$status`: a searchset Bundle with the status Parameters."""
        ...

    async def subscription_events(
        self,
        subscription_id: str,
        *,
        since: int,
        until: int | None = None,
        content: str | None = None,
    ) -> FhirJson:
        """`Subscription/<id>/$events` for event numbers `since`..`until` (inclusive), in
        the payload `content` asked for (`empty`, `id-only`, `full-resource`)."""
        ...
