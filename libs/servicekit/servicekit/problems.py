"""RFC 9457 problem details for every HTTP error a service returns: never a traceback."""

from __future__ import annotations

import json
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException as StarletteHTTPException

from servicekit.db import CONNECT_FAILURES, database_unreachable
from servicekit.logging import get_logger

PROBLEM_JSON = "application/problem+json"
log = get_logger(__name__)


def problem(status: int, title: str, detail: str | None = None, **extra: Any) -> JSONResponse:
    """A problem+json response."""
    body: dict[str, Any] = {"type": "about:blank", "title": title, "status": status}
    if detail:
        body["detail"] = detail
    body.update(extra)
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON)


def _validation_errors(exc: RequestValidationError) -> list[dict[str, Any]]:
    # Inputs are left out: a rejected request body may carry PHI.
    return [
        {"loc": list(err.get("loc", ())), "msg": err.get("msg", ""), "type": err.get("type", "")}
        for err in exc.errors()
    ]


def install(app: FastAPI) -> None:
    """Map every error to problem+json: 400 malformed JSON, 422 invalid, 503 database not
    reachable, 500 unexpected."""

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = _validation_errors(exc)
        if any(e["type"] == "json_invalid" for e in errors):
            return problem(400, "Malformed JSON", "The request body is not valid JSON.")
        return problem(
            422, "Invalid request", "The request does not match the schema.", errors=errors
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
        response = problem(exc.status_code, _title(exc.status_code), detail)
        for key, value in (exc.headers or {}).items():
            response.headers[key] = value
        return response

    async def _database(request: Request, exc: Exception) -> JSONResponse:
        if not database_unreachable(exc):
            return await _unexpected(request, exc)
        # The database down, restarting, or a connection cut under us (the pool has
        # replaced it by now): the caller may simply try again.
        log.warning("http.database_unavailable", path=request.url.path, error=type(exc).__name__)
        response = problem(
            503, "Service unavailable", "The service's database did not answer; try again."
        )
        response.headers["Retry-After"] = "1"
        return response

    kinds: tuple[type[Exception], ...] = (DBAPIError, *CONNECT_FAILURES)
    for kind in kinds:
        app.add_exception_handler(kind, _database)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("http.unhandled_error", path=request.url.path, error=type(exc).__name__)
        return problem(500, "Internal error", "The service failed; the error was logged.")


# The shape of every error answer (RFC 9457), for the OpenAPI documents.
PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["type", "title", "status"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
    },
}


def documented(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """A route's `responses` for the error answers it gives (problem+json), so its OpenAPI
    document says every status a caller can get."""
    return {
        status: {
            "description": _title(status),
            "content": {PROBLEM_JSON: {"schema": PROBLEM_SCHEMA}},
        }
        for status in statuses
    }


def title_of(status: int) -> str:
    """The standard reason phrase of an HTTP status, as a problem's title."""
    return _title(status)


def _title(status: int) -> str:
    from http import HTTPStatus

    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"
