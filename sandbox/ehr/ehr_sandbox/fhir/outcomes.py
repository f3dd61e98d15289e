"""OperationOutcome helpers: every error the sandbox returns is a FHIR OperationOutcome.

Routes raise `FhirError`; the handlers installed by `install_error_handlers` turn it, and
FastAPI's own request errors, into `application/fhir+json` responses with the right
status, so a client never sees an HTML page, a bare `{"detail": ...}` or a 500 for bad
input.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from servicekit.logging import get_logger

FHIR_JSON = "application/fhir+json"
FHIR_JSON_CHARSET = "application/fhir+json; charset=utf-8"

Severity = Literal["fatal", "error", "warning", "information"]

log = get_logger(__name__)

# HTTP status → the IssueType code that best describes it when a caller gives none.
_STATUS_CODES: dict[int, str] = {
    400: "invalid",
    401: "login",
    403: "forbidden",
    404: "not-found",
    405: "not-supported",
    406: "not-supported",
    409: "conflict",
    410: "deleted",
    412: "conflict",
    415: "not-supported",
    422: "processing",
    429: "throttled",
    500: "exception",
    503: "transient",
}


def issue(
    severity: Severity,
    code: str,
    diagnostics: str,
    expression: list[str] | None = None,
) -> dict[str, Any]:
    """One OperationOutcome.issue entry."""
    entry: dict[str, Any] = {"severity": severity, "code": code, "diagnostics": diagnostics}
    if expression:
        entry["expression"] = expression
    return entry


def operation_outcome(*issues: dict[str, Any]) -> dict[str, Any]:
    """An OperationOutcome resource holding `issues` (an informational one if none)."""
    body = list(issues) or [issue("information", "informational", "All OK")]
    return {"resourceType": "OperationOutcome", "issue": body}


def dump_json(body: Any) -> bytes:
    """Serialise a FHIR JSON body compactly (FHIR JSON never needs key sorting)."""
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


class FhirResponse(Response):
    """A response whose body is FHIR JSON."""

    media_type = FHIR_JSON_CHARSET

    def render(self, content: Any) -> bytes:
        """Render `content` (a dict or list) as compact UTF-8 JSON."""
        return dump_json(content)


class FhirError(Exception):
    """An error a route raises to answer with an OperationOutcome and an HTTP status."""

    def __init__(
        self,
        status: int,
        diagnostics: str,
        *,
        code: str | None = None,
        severity: Severity = "error",
        expression: list[str] | None = None,
        headers: Mapping[str, str] | None = None,
        issues: list[dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(diagnostics)
        self.status = status
        self.headers = dict(headers or {})
        issue_code = code or _STATUS_CODES.get(status, "processing")
        self.issues = issues or [issue(severity, issue_code, diagnostics, expression)]

    def outcome(self) -> dict[str, Any]:
        """The OperationOutcome body of this error."""
        return operation_outcome(*self.issues)

    def response(self) -> FhirResponse:
        """The HTTP response for this error."""
        return FhirResponse(self.outcome(), status_code=self.status, headers=self.headers)


async def _fhir_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, FhirError)
    return exc.response()


async def _validation_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    issues = []
    for err in exc.errors():
        location = ".".join(str(part) for part in err.get("loc", ()) if part != "body")
        message = str(err.get("msg", "invalid"))
        issues.append(issue("error", "invalid", message, [location] if location else None))
    # A body FastAPI could not even decode as JSON is a 400; a well-formed body with wrong
    # fields is a 422, which is also what FHIR servers answer for semantic problems.
    status = 400 if any(err.get("type") == "json_invalid" for err in exc.errors()) else 422
    return FhirResponse(operation_outcome(*issues), status_code=status)


async def _http_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    diagnostics = exc.detail if isinstance(exc.detail, str) else "HTTP error"
    code = _STATUS_CODES.get(exc.status_code, "processing")
    return FhirResponse(
        operation_outcome(issue("error", code, diagnostics)),
        status_code=exc.status_code,
        headers=dict(exc.headers or {}),
    )


async def _unexpected_error(_request: Request, exc: Exception) -> Response:
    # Reached only through a bug in the sandbox, never through client input; the body
    # still follows FHIR so a client's error handling is exercised the same way.
    log.error("unhandled_error", error_type=type(exc).__name__)
    return FhirResponse(
        operation_outcome(issue("fatal", "exception", "Internal server error")),
        status_code=500,
    )


def install_error_handlers(app: FastAPI) -> None:
    """Make every error response of `app` an OperationOutcome."""
    app.add_exception_handler(FhirError, _fhir_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected_error)


def location_expression(root: str, loc: tuple[int | str, ...]) -> str:
    """A FHIRPath-like expression (`Patient.name[0].given`) for a pydantic error location."""
    expression = root
    for part in loc:
        if isinstance(part, int):
            expression += f"[{part}]"
        elif part:
            expression += f".{part}"
    return expression


def issues_from_errors(
    root: str, errors: Sequence[Mapping[str, object]], *, limit: int = 20
) -> list[dict[str, Any]]:
    """OperationOutcome issues, one per pydantic error, naming the element and the problem."""
    issues = []
    for err in errors[:limit]:
        loc = err.get("loc", ())
        expression = location_expression(root, tuple(loc) if isinstance(loc, tuple) else ())
        message = str(err.get("msg", "invalid value"))
        issues.append(issue("error", "invalid", f"{expression}: {message}", [expression]))
    if len(errors) > limit:
        issues.append(issue("information", "informational", f"{len(errors) - limit} more errors"))
    return issues
