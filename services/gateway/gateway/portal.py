"""The portal page and its sign-in exchange.

The page is a shell (`static/index.html`) and plain ES modules with a stylesheet
(`static/portal/`), served as they are: no build step, nothing generated to commit. Every
screen reads and writes through the public `/v1` API with the patient's token, as any other
patient app would. The page signs the patient in with the issuer's authorization-code flow
(PKCE); the code is exchanged here, server-side, so the page never needs cross-origin
access to the issuer.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Annotated

import httpx
from fastapi import APIRouter, FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field

from gateway.settings import Settings
from servicekit.app import Service

router = APIRouter(tags=["portal"])


def _settings(request: Request) -> Settings:
    service: Service = request.app.state.service
    settings: Settings = service.settings  # type: ignore[assignment]
    return settings


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def portal_page(request: Request) -> HTMLResponse:
    """The patient portal: large text, high contrast, keyboard and screen-reader friendly."""
    settings = _settings(request)
    config = {"issuer": settings.oidc_issuer.rstrip("/"), "clientId": settings.oidc_client_id}
    page = resources.files("gateway").joinpath("static/index.html").read_text(encoding="utf-8")
    html = page.replace("__PORTAL_CONFIG__", json.dumps(config).replace("<", "\\u003c"))
    return HTMLResponse(
        html,
        headers={
            # No inline script or style: the modules and the stylesheet are files.
            "Content-Security-Policy": (
                "default-src 'self'; script-src 'self'; style-src 'self'; "
                "img-src 'self' data: blob:; connect-src 'self'; frame-ancestors 'none'; "
                "form-action 'self' " + config["issuer"]
            ),
            "Cache-Control": "no-store",
        },
    )


def mount_static(app: FastAPI) -> None:
    """Serve the portal's modules and stylesheet under `/portal/`."""
    folder = resources.files("gateway").joinpath("static/portal")
    app.mount("/portal", StaticFiles(directory=str(folder)), name="portal-static")


class CodeExchange(BaseModel):
    """The authorization code the issuer redirected back with, and the PKCE verifier."""

    code: Annotated[str, Field(min_length=8, max_length=512)]
    code_verifier: Annotated[str, Field(min_length=43, max_length=128)]
    redirect_uri: Annotated[str, Field(min_length=1, max_length=500)]


@router.post("/v1/session")
async def exchange_code(body: CodeExchange, request: Request) -> dict[str, object]:
    """Exchange the sign-in code for an access token (returned to the page, kept in memory)."""
    settings = _settings(request)
    service: Service = request.app.state.service
    http: httpx.AsyncClient = service.state["http"]
    issuer = settings.oidc_issuer.rstrip("/")
    try:
        meta = (await http.get(f"{issuer}/.well-known/openid-configuration")).json()
        response = await http.post(
            meta["token_endpoint"],
            data={
                "grant_type": "authorization_code",
                "code": body.code,
                "code_verifier": body.code_verifier,
                "redirect_uri": body.redirect_uri,
                "client_id": settings.oidc_client_id,
            },
        )
    except (httpx.HTTPError, ValueError, KeyError) as exc:
        raise HTTPException(503, "The sign-in service is unavailable.") from exc
    if response.status_code != 200:
        raise HTTPException(400, "The sign-in code was not accepted; please sign in again.")
    token = response.json()
    return {"access_token": token["access_token"], "expires_in": token.get("expires_in", 300)}
