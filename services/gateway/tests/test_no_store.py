"""The patient API's answers are never stored by a browser or a proxy (`NoStoreMiddleware`),
whatever answered them: a route, an error, the rate limiter behind it."""

from __future__ import annotations

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.no_store import NoStoreMiddleware


async def _labs(request: Request) -> Response:
    return JSONResponse({"items": []})


async def _download(request: Request) -> Response:
    return Response(b"%PDF", headers={"Cache-Control": "private, max-age=0"})


async def _boom(request: Request) -> Response:
    return JSONResponse({"detail": "not found"}, status_code=404)


APP = NoStoreMiddleware(
    Starlette(
        routes=[
            Route("/v1/me/lab-results", _labs),
            Route("/v1/me/documents/1/content", _download),
            Route("/v1/me/missing", _boom),
            Route("/healthz", _labs),
        ]
    )
)


async def test_every_patient_api_answer_says_no_store_unless_it_says_otherwise() -> None:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=APP), base_url="http://gateway"
    ) as client:
        assert (await client.get("/v1/me/lab-results")).headers["cache-control"] == "no-store"
        assert (await client.get("/v1/me/missing")).headers["cache-control"] == "no-store"
        assert (await client.get("/v1/me/nowhere")).headers["cache-control"] == "no-store"
        download = await client.get("/v1/me/documents/1/content")
        assert download.headers.get_list("cache-control") == ["private, max-age=0"]
        assert "cache-control" not in (await client.get("/healthz")).headers
