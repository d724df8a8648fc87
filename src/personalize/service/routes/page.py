"""The clinician page: `/` serves page_dir/index.html and `/page/...` its local assets
(docs/page.md); without the page, `/` says where the API is documented."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse, HTMLResponse, Response
from fastapi.staticfiles import StaticFiles

PLACEHOLDER_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>personalize</title></head>
<body><main><h1>personalize</h1>
<p>The clinician page is not installed in this build. The API is documented at
<a href="/docs">/docs</a> (OpenAPI: <a href="/openapi.json">/openapi.json</a>).</p>
</main></body></html>
"""


def mount(app: FastAPI, page_dir: Path) -> None:
    """The page's routes, read from `page_dir` (PERSONALIZE_PAGE_DIR) when it exists."""
    if page_dir.is_dir():
        app.mount("/page", StaticFiles(directory=page_dir), name="page")

    @app.get("/", include_in_schema=False)
    def index() -> Response:
        page = page_dir / "index.html"
        if page.is_file():
            return FileResponse(page, media_type="text/html")
        return HTMLResponse(PLACEHOLDER_PAGE)
