"""The FHIR R4 REST adapter of `EhrPort`: async httpx, SMART auth, retries, circuit breaker.

One pooled `httpx.AsyncClient` per service with connect/read/write/pool timeouts. Every
call goes through the circuit breaker, then through the tries the retry policy allows
(`ehr_connector.ehr.retry`: which answers are tried again, back-off, Retry-After and the
client-wide pace after a 429). Here:

* a 401 drops the cached token and the request is sent once more with a fresh one;
* after the retries: 5xx other than 500, 429, timeouts and connection errors raise
  `EhrUnavailable` (a `DependencyUnavailable`: the event waits in Kafka); a persistent 500
  raises `EhrServerError` (bounded retries by the consumer, then a dead letter, since one
  request may be what the EHR chokes on); 409/412 raise `EhrConflict`; other 4xx raise
  `EhrRejected` (a `PermanentError`) with the OperationOutcome.

The breaker counts timeouts, connection errors and 5xx as failures; any other answer (4xx
and 429 included: the EHR is alive) is a success.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import UTC, datetime
from urllib.parse import urlencode, urlsplit

import httpx

from ehr_connector.ehr.auth import make_auth
from ehr_connector.ehr.breaker import BreakerState, CircuitBreaker
from ehr_connector.ehr.errors import (
    EhrAuthFailed,
    EhrConflict,
    EhrError,
    EhrGone,
    EhrNotFound,
    EhrRejected,
    EhrServerError,
    EhrUnavailable,
)
from ehr_connector.ehr.metrics import EHR_CALL_SECONDS, record_breaker_change
from ehr_connector.ehr.port import FhirJson, SearchPage, SearchParams, Versioned, WriteResult
from ehr_connector.ehr.retry import (
    Disposition,
    RetryAfterGate,
    RetryPolicy,
    TransientFailure,
    classify_status,
    parse_retry_after,
)
from ehr_connector.ehr.written import WrittenVersions
from ehr_connector.settings import Settings

# Methods that change the EHR: bounded in flight (Settings.ehr_writes_at_once).
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})

FHIR_JSON = "application/fhir+json"
_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
_TYPE = re.compile(r"^[A-Z][A-Za-z]{1,63}$")


def _outcome(response: httpx.Response) -> FhirJson | None:
    try:
        body = response.json()
    except ValueError:
        return None
    if isinstance(body, dict) and body.get("resourceType") == "OperationOutcome":
        return body
    return None


# Servers may answer a repeated search from a cache (HAPI for about a minute): the connector
# searches to find what changed or what it wrote itself, so it asks for current results.
FRESH_SEARCH: dict[str, str] = {"Cache-Control": "no-cache"}


def _check_type(resource_type: str) -> str:
    if not _TYPE.match(resource_type):
        raise ValueError(f"not a FHIR resource type: {resource_type!r}")
    return resource_type


def _check_id(fhir_id: str) -> str:
    # Ids go into URL paths: anything but FHIR's id grammar (e.g. "../") is refused.
    if not _ID.match(fhir_id):
        raise ValueError(f"not a FHIR id: {fhir_id!r}")
    return fhir_id


class FhirClient:
    """`EhrPort` for a FHIR R4 server, authenticated with SMART Backend Services."""

    def __init__(
        self,
        settings: Settings,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        breaker: CircuitBreaker | None = None,
    ) -> None:
        self.settings = settings
        self.base_url = settings.ehr_base_url.rstrip("/")
        verify: bool | str = settings.ehr_ca_file or settings.ehr_verify_tls
        self._http = httpx.AsyncClient(
            base_url=self.base_url + "/",
            timeout=httpx.Timeout(
                connect=settings.ehr_connect_timeout_s,
                read=settings.ehr_read_timeout_s,
                write=settings.ehr_write_timeout_s,
                pool=settings.ehr_pool_timeout_s,
            ),
            limits=httpx.Limits(
                max_connections=settings.ehr_max_connections,
                max_keepalive_connections=settings.ehr_max_keepalive_connections,
            ),
            headers={"Accept": FHIR_JSON},
            verify=verify,
            transport=transport,
        )
        self.auth = make_auth(settings, self._http)
        self._closing = False
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self.retry = RetryPolicy.of(settings)
        self.gate = RetryAfterGate(settings.ehr_throttle_serial_s, settings.ehr_retry_after_max_s)
        self._writes = asyncio.Semaphore(settings.ehr_writes_at_once)
        # What this client wrote lately, for the inbound echo check (`written`).
        self.written = WrittenVersions()
        self.breaker = breaker or CircuitBreaker(
            failure_threshold=settings.ehr_breaker_failure_threshold,
            reset_after_s=settings.ehr_breaker_reset_s,
            on_change=record_breaker_change,
        )

    async def aclose(self, drain_s: float = 10.0) -> None:
        """Refuse new calls, let calls in flight finish (up to `drain_s`), close the pool.

        A call refused while closing raises `EhrUnavailable`, so an event being handled
        during shutdown waits in Kafka instead of spending its retries."""
        self._closing = True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout=drain_s)
        await self._http.aclose()

    # -- EhrPort ----------------------------------------------------------------------

    async def capabilities(self) -> FhirJson:
        """The CapabilityStatement."""
        response = await self._request("capabilities", "CapabilityStatement", "GET", "metadata")
        return _body(response)

    async def read(self, resource_type: str, fhir_id: str) -> Versioned:
        """The current version of one resource."""
        path = f"{_check_type(resource_type)}/{_check_id(fhir_id)}"
        response = await self._request("read", resource_type, "GET", path)
        return Versioned(_body(response))

    async def search(
        self, resource_type: str, params: SearchParams, *, count: int | None = None
    ) -> SearchPage:
        """The first page of a search."""
        query = [(k, v) for k, v in (params.items() if isinstance(params, Mapping) else params)]
        if count is not None:
            query.append(("_count", str(count)))
        response = await self._request(
            "search",
            resource_type,
            "GET",
            _check_type(resource_type),
            params=query,
            headers=FRESH_SEARCH,
        )
        return _page(_body(response))

    async def next_page(self, page: SearchPage) -> SearchPage | None:
        """The page after `page`, or None."""
        if page.next_url is None:
            return None
        # The token must never travel to another host a Bundle link points at.
        if not _same_base(page.next_url, self.base_url):
            raise EhrRejected("a paging link leaves the EHR's base URL", interaction="search")
        resource_type = _type_of_link(page.next_url, self.base_url)
        response = await self._request(
            "search", resource_type, "GET", page.next_url, headers=FRESH_SEARCH
        )
        return _page(_body(response))

    async def pages(
        self, resource_type: str, params: SearchParams, *, count: int | None = None
    ) -> AsyncIterator[SearchPage]:
        """Every page of a search, in order."""
        page: SearchPage | None = await self.search(resource_type, params, count=count)
        followed: set[str] = set()
        while page is not None:
            yield page
            if page.next_url in followed:
                # A server whose `next` link points back would page forever.
                raise EhrRejected("the EHR's paging links loop", interaction="search")
            if page.next_url is not None:
                followed.add(page.next_url)
            page = await self.next_page(page)

    async def everything(
        self,
        patient_fhir_id: str,
        *,
        since: datetime | None = None,
        types: Sequence[str] = (),
        count: int | None = None,
    ) -> SearchPage:
        """The first page of `Patient/<id>/$everything`."""
        query: list[tuple[str, str]] = []
        if since is not None:
            query.append(("_since", since.astimezone(UTC).isoformat()))
        if types:
            query.append(("_type", ",".join(_check_type(t) for t in types)))
        if count is not None:
            query.append(("_count", str(count)))
        path = f"Patient/{_check_id(patient_fhir_id)}/$everything"
        response = await self._request("operation", "Patient", "GET", path, params=query)
        return _page(_body(response))

    async def create(self, resource: FhirJson, *, if_none_exist: str | None = None) -> WriteResult:
        """POST a new resource; conditional on `if_none_exist` (a search query string)."""
        resource_type = _check_type(str(resource["resourceType"]))
        headers = {"Content-Type": FHIR_JSON, "Prefer": "return=representation"}
        if if_none_exist is not None:
            headers["If-None-Exist"] = if_none_exist
        response = await self._request(
            "create",
            resource_type,
            "POST",
            resource_type,
            json_body=resource,
            headers=headers,
            idempotent=if_none_exist is not None,
        )
        return await self._write_result(response, resource_type, resource)

    async def update(self, resource: FhirJson, *, if_match: str | None = None) -> WriteResult:
        """PUT a resource by its id; with `if_match` only onto that version."""
        resource_type = _check_type(str(resource["resourceType"]))
        path = f"{resource_type}/{_check_id(str(resource['id']))}"
        headers = {"Content-Type": FHIR_JSON, "Prefer": "return=representation"}
        if if_match is not None:
            headers["If-Match"] = f'W/"{if_match}"'
        response = await self._request(
            "update", resource_type, "PUT", path, json_body=resource, headers=headers
        )
        return await self._write_result(response, resource_type, resource)

    async def subscription_status(self, subscription_id: str) -> FhirJson:
        """`Subscription/<id>/$status`."""
        path = f"Subscription/{_check_id(subscription_id)}/$status"
        return _body(await self._request("operation", "Subscription", "GET", path))

    async def subscription_events(
        self,
        subscription_id: str,
        *,
        since: int,
        until: int | None = None,
        content: str | None = None,
    ) -> FhirJson:
        """`Subscription/<id>/$events` for event numbers `since`..`until`."""
        query = [("eventsSinceNumber", str(since))]
        if until is not None:
            query.append(("eventsUntilNumber", str(until)))
        if content is not None:
            query.append(("content", content))
        path = f"Subscription/{_check_id(subscription_id)}/$events"
        return _body(await self._request("operation", "Subscription", "GET", path, params=query))

    # -- readiness ----------------------------------------------------------------------

    async def probe(self) -> str | None:
        """Readiness: None when the breaker is closed and `/metadata` answers, else why
        not. One quick call, no retries, not counted by the breaker."""
        state = self.breaker.state
        if state is BreakerState.OPEN:
            return f"unavailable: circuit open, next trial in {self.breaker.retry_in():.0f}s"
        if state is BreakerState.HALF_OPEN:
            return "unavailable: circuit half-open"
        if self.gate.wait_s() > 0:
            # The EHR just answered (429): it is up, and asked for no request until then.
            return None
        try:
            response = await self._http.get("metadata", timeout=2.0)
        except httpx.HTTPError as exc:
            return f"unavailable: {type(exc).__name__}"
        if response.status_code != 200:
            return f"unavailable: metadata answered {response.status_code}"
        return None

    # -- the call pipeline --------------------------------------------------------------

    async def _request(
        self,
        interaction: str,
        resource_type: str,
        method: str,
        url: str,
        *,
        params: list[tuple[str, str]] | None = None,
        json_body: FhirJson | None = None,
        headers: dict[str, str] | None = None,
        idempotent: bool = True,
    ) -> httpx.Response:
        if self._closing:
            raise EhrUnavailable("the EHR client is shutting down", interaction=interaction)
        self._in_flight += 1
        self._idle.clear()
        try:
            return await self._retrying(
                interaction, resource_type, method, url, params, json_body, headers, idempotent
            )
        finally:
            self._in_flight -= 1
            if self._in_flight == 0:
                self._idle.set()

    async def _retrying(
        self,
        interaction: str,
        resource_type: str,
        method: str,
        url: str,
        params: list[tuple[str, str]] | None,
        json_body: FhirJson | None,
        headers: dict[str, str] | None,
        idempotent: bool,
    ) -> httpx.Response:
        try:
            async for attempt in self.retry.attempts(interaction, idempotent=idempotent):
                with attempt:
                    response = await self._exchange(
                        interaction, resource_type, method, url, params, json_body, headers
                    )
        except TransientFailure as exc:
            cls = EhrServerError if exc.status == 500 else EhrUnavailable
            raise cls(
                f"EHR answered {exc.status} to {interaction} {resource_type}",
                status=exc.status,
                outcome=exc.outcome,
                interaction=interaction,
                resource_type=resource_type,
            ) from exc
        except httpx.TransportError as exc:
            raise EhrUnavailable(
                f"EHR unreachable on {interaction} {resource_type} ({type(exc).__name__})",
                interaction=interaction,
                resource_type=resource_type,
            ) from exc
        self._raise_for_status(response, interaction, resource_type)
        return response

    async def _exchange(
        self,
        interaction: str,
        resource_type: str,
        method: str,
        url: str,
        params: list[tuple[str, str]] | None,
        json_body: FhirJson | None,
        headers: dict[str, str] | None,
    ) -> httpx.Response:
        """One try: breaker, token, request, and a second request after a 401."""
        self.breaker.allow()
        try:
            token = await self.auth.token()
            response = await self._send(
                interaction, resource_type, method, url, params, json_body, headers, token
            )
            if response.status_code == 401:
                self.auth.invalidate(token)
                token = await self.auth.token()
                response = await self._send(
                    interaction, resource_type, method, url, params, json_body, headers, token
                )
                if response.status_code == 401:
                    self.breaker.record_success()
                    raise EhrAuthFailed(
                        "the EHR refuses a freshly issued token",
                        status=401,
                        outcome=_outcome(response),
                        interaction=interaction,
                        resource_type=resource_type,
                    )
            status = response.status_code
            if classify_status(status) is Disposition.TRANSIENT:
                if status == 429 or status == 408:
                    self.breaker.record_success()
                else:
                    self.breaker.record_failure()
                raise TransientFailure(
                    status,
                    parse_retry_after(response.headers.get("Retry-After")),
                    _outcome(response),
                )
            self.breaker.record_success()
            return response
        except BaseException:
            # No verdict reached the breaker (e.g. the token endpoint failed, or cancelled):
            # let another call be the half-open trial.
            self.breaker.release()
            raise

    async def _send(
        self,
        interaction: str,
        resource_type: str,
        method: str,
        url: str,
        params: list[tuple[str, str]] | None,
        json_body: FhirJson | None,
        headers: dict[str, str] | None,
        token: str,
    ) -> httpx.Response:
        request_headers = dict(headers or {})
        if token:
            request_headers["Authorization"] = f"Bearer {token}"
        write = method in WRITE_METHODS
        bounded = self._writes if write else contextlib.nullcontext()
        async with bounded, self.gate.passage(interaction, write=write):
            started = time.perf_counter()
            response = await self._send_once(
                interaction, resource_type, method, url, params, json_body, request_headers, started
            )
            if response.status_code == 429:
                retry_after = parse_retry_after(response.headers.get("Retry-After"))
                # No Retry-After: the call's own back-off decides; the gate stays open.
                if retry_after is not None:
                    self.gate.hold(retry_after, write=write)
        return response

    async def _send_once(
        self,
        interaction: str,
        resource_type: str,
        method: str,
        url: str,
        params: list[tuple[str, str]] | None,
        json_body: FhirJson | None,
        request_headers: dict[str, str],
        started: float,
    ) -> httpx.Response:
        try:
            response = await self._http.request(
                method,
                url,
                # None keeps a paging link's own query (an empty QueryParams would drop it).
                params=httpx.QueryParams(tuple(params)) if params is not None else None,
                json=json_body,
                headers=request_headers,
            )
        except httpx.TimeoutException:
            self._observe(interaction, resource_type, "timeout", started)
            self.breaker.record_failure()
            raise
        except httpx.TransportError:
            self._observe(interaction, resource_type, "connection_error", started)
            self.breaker.record_failure()
            raise
        self._observe(interaction, resource_type, str(response.status_code), started)
        return response

    @staticmethod
    def _observe(interaction: str, resource_type: str, status: str, started: float) -> None:
        EHR_CALL_SECONDS.labels(interaction, resource_type, status).observe(
            time.perf_counter() - started
        )

    @staticmethod
    def _raise_for_status(response: httpx.Response, interaction: str, resource_type: str) -> None:
        disposition = classify_status(response.status_code)
        if disposition is Disposition.OK:
            return
        error: type[EhrError] = {
            Disposition.CONFLICT: EhrConflict,
            Disposition.NOT_FOUND: EhrNotFound,
            Disposition.GONE: EhrGone,
        }.get(disposition, EhrRejected)
        raise error(
            f"EHR answered {response.status_code} to {interaction} {resource_type}",
            status=response.status_code,
            outcome=_outcome(response),
            interaction=interaction,
            resource_type=resource_type,
        )

    async def _write_result(
        self, response: httpx.Response, resource_type: str, sent: FhirJson
    ) -> WriteResult:
        created = response.status_code == 201
        body = _body(response) if response.content else {}
        if body.get("resourceType") == resource_type and "id" in body:
            result = WriteResult(body, created=created)
            if created or response.request.method == "PUT":
                # A new version (a conditional create that matched wrote nothing).
                self.written.note_write(sent, result.id, result.version_id)
            return result
        # The server answered minimally: read what the Location names.
        location = response.headers.get("Location", "")
        match = re.search(rf"{resource_type}/([A-Za-z0-9\-.]{{1,64}})", location)
        if match is None:
            raise EhrRejected(
                f"the EHR's answer to a {resource_type} write names no resource",
                interaction="create" if created else "update",
                resource_type=resource_type,
            )
        current = await self.read(resource_type, match.group(1))
        return WriteResult(current.resource, created=created)


def _body(response: httpx.Response) -> FhirJson:
    try:
        body = response.json()
    except ValueError as exc:
        raise EhrRejected(f"the EHR answered {response.status_code} with no JSON") from exc
    if not isinstance(body, dict):
        raise EhrRejected("the EHR answered a JSON value that is not a resource")
    return body


def _page(bundle: FhirJson) -> SearchPage:
    matches: list[FhirJson] = []
    included: list[FhirJson] = []
    for entry in bundle.get("entry", []):
        resource = entry.get("resource")
        if not isinstance(resource, dict):
            continue
        mode = (entry.get("search") or {}).get("mode", "match")
        if mode == "match":
            matches.append(resource)
        elif mode == "include":
            included.append(resource)
    next_url = next(
        (link.get("url") for link in bundle.get("link", []) if link.get("relation") == "next"),
        None,
    )
    total = bundle.get("total")
    return SearchPage(
        bundle=bundle,
        matches=matches,
        included=included,
        total=total if isinstance(total, int) else None,
        next_url=next_url,
    )


def _same_base(url: str, base: str) -> bool:
    link, ours = urlsplit(url), urlsplit(base)
    return (link.scheme, link.netloc) == (ours.scheme, ours.netloc) and link.path.startswith(
        ours.path
    )


def _type_of_link(url: str, base: str) -> str:
    rest = urlsplit(url).path[len(urlsplit(base).path) :].strip("/")
    first = rest.split("/", 1)[0]
    return first if _TYPE.match(first) else "Bundle"


def condition(**criteria: str) -> str:
    """A conditional-request query string (`If-None-Exist`), URL-encoded."""
    return urlencode(list(criteria.items()))
