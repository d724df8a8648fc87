"""The API documentation: `/docs` is Swagger UI on /openapi.json, its scripts and styles
served from the package (docs_ui/, under `/docs/assets/...`) rather than a CDN, so the page
runs no code the service does not ship and its Content-Security-Policy can say so. ReDoc
is not served."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from personalize.service.config import PACKAGE_DIR
from personalize.service.headers import DOCS, DOCS_ASSETS

DOCS_UI_DIR = PACKAGE_DIR / "docs_ui"

DOCS_PAGE = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<title>personalize - API documentation</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="{DOCS_ASSETS}swagger-ui.css">
<script src="{DOCS_ASSETS}swagger-ui-bundle.js" defer></script>
<script src="{DOCS_ASSETS}init.js" defer></script>
</head>
<body><div id="swagger-ui"></div></body></html>
"""


def mount(app: FastAPI, assets: Path = DOCS_UI_DIR) -> None:
    """`/docs` and its assets (create the app with docs_url=None and redoc_url=None)."""
    app.mount(DOCS_ASSETS.rstrip("/"), StaticFiles(directory=assets), name="docs-assets")

    @app.get(DOCS, include_in_schema=False)
    def docs() -> HTMLResponse:
        return HTMLResponse(DOCS_PAGE)
