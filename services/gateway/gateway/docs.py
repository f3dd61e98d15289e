"""The API documentation (`/docs`), working offline: Swagger UI's files come from the
pinned `swagger-ui-py` wheel and are served by the gateway itself, never from a CDN.
It ships Swagger UI 5, which reads OpenAPI 3.1 (FastAPI's documents are 3.1; Swagger UI 4,
as the `swagger-ui-bundle` wheel ships it, refused them: "Unable to render this
definition").

FastAPI's own `/docs` and `/redoc` pages load their scripts from a CDN (a blank page
without internet), so `replace_default_docs` removes them and this router serves Swagger
UI instead. The OpenAPI document declares the `smart` bearer scheme, so the Authorize
button takes a patient access token (the README says how to get one in development).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, FastAPI, HTTPException
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, HTMLResponse

router = APIRouter(include_in_schema=False)

# The only files of the bundle the page needs; anything else is a 404.
ASSETS = {
    "swagger-ui.css": "text/css",
    "swagger-ui-bundle.js": "text/javascript",
    "favicon-32x32.png": "image/png",
}
_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'"
)
_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Patient API - documentation</title>
<link rel="icon" href="/docs/assets/favicon-32x32.png">
<link rel="stylesheet" href="/docs/assets/swagger-ui.css">
</head>
<body>
<main id="swagger-ui"></main>
<script src="/docs/assets/swagger-ui-bundle.js"></script>
<script src="/docs/assets/init.js"></script>
</body>
</html>
"""


def _bundle_dir() -> Path:
    return Path(str(resources.files("swagger_ui").joinpath("static")))


@router.get("/docs", response_class=HTMLResponse)
async def docs_page() -> HTMLResponse:
    """Swagger UI for the patient API, from local files."""
    return HTMLResponse(_PAGE, headers={"Content-Security-Policy": _CSP})


@router.get("/docs/assets/init.js")
async def docs_init() -> FileResponse:
    """Starts Swagger UI on the gateway's OpenAPI document (a file: the CSP has no
    inline scripts)."""
    path = resources.files("gateway").joinpath("static/docs-init.js")
    return FileResponse(str(path), media_type="text/javascript")


@router.get("/docs/assets/{name}")
async def docs_asset(
    name: Annotated[str, PathParam(max_length=64, pattern=r"^[a-z0-9.-]+$")],
) -> FileResponse:
    """One file of the pinned Swagger UI bundle."""
    media_type = ASSETS.get(name)
    if media_type is None:
        raise HTTPException(404, "No such documentation file.")
    return FileResponse(
        _bundle_dir() / name,
        media_type=media_type,
        headers={"Cache-Control": "public, max-age=86400"},
    )


def replace_default_docs(app: FastAPI) -> None:
    """Drop FastAPI's CDN-backed `/docs`, `/docs/oauth2-redirect` and `/redoc` routes."""
    cdn_pages = {app.docs_url, app.redoc_url, app.swagger_ui_oauth2_redirect_url}
    app.router.routes[:] = [
        r for r in app.router.routes if getattr(r, "path", None) not in cdn_pages
    ]
    app.include_router(router)
