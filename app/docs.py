"""/docs: Swagger UI served from vendored files, so the API docs work offline.

FastAPI's default /docs page loads Swagger UI's JavaScript and CSS from a CDN (jsdelivr);
/docs must work without one (air-gapped hosts, strict egress, no third party
seeing who reads our docs). The assets come from the npm package swagger-ui-dist,
vendored into app/static/swagger-ui/ by scripts/vendor-swagger-ui.sh (version in VERSION).
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from starlette.staticfiles import StaticFiles

ASSETS_DIR = Path(__file__).resolve().parent / "static" / "swagger-ui"
ASSETS_PATH = "/docs/static"


def install_docs(app: FastAPI) -> None:
    """Serve the Swagger UI assets under /docs/static/ and the page at GET /docs."""
    if app.openapi_url is None:
        raise ValueError("install_docs needs the app's openapi_url")
    # Relative URLs (resolved against /docs, i.e. the parent directory) keep the page
    # working when a proxy serves the app under a path prefix, with no root_path set-up.
    assets = ASSETS_PATH.lstrip("/")
    openapi_url = app.openapi_url.lstrip("/")
    # check_dir: a missing asset directory stops the start instead of a blank page later.
    app.mount(ASSETS_PATH, StaticFiles(directory=ASSETS_DIR, check_dir=True), name="docs-static")

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=openapi_url,
            title=f"{app.title} - API docs",
            swagger_js_url=f"{assets}/swagger-ui-bundle.js",
            swagger_css_url=f"{assets}/swagger-ui.css",
            swagger_favicon_url=f"{assets}/favicon-32x32.png",
        )
