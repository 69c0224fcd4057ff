"""/docs: Swagger UI from vendored assets (no CDN), off in production unless DOCS_ENABLED."""

from __future__ import annotations

import re
from urllib.parse import urljoin

import pytest

from tests.conftest import API_KEYS

# Every URL the page makes the browser load: <link href>, <script src>, and the spec url.
_URL = re.compile(r"""(?:href|src)="([^"]*)"|\burl: '([^']*)'""")
_CONTENT_TYPES = {".js": "javascript", ".css": "text/css", ".png": "image/png"}
PRODUCTION = {"app_env": "production", "api_keys": API_KEYS}


def referenced_urls(html: str) -> list[str]:
    return [href or url for href, url in _URL.findall(html)]


async def test_docs_page_loads_only_local_assets(client):
    """/docs is HTML whose every asset URL is the app's own, and each asset is served."""
    response = await client.get("/docs")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    html = response.text
    assert "cdn.jsdelivr.net" not in html
    assert "http://" not in html and "https://" not in html, html
    refs = referenced_urls(html)
    assert len(refs) == 4, refs  # css, favicon, js, openapi.json
    page = str(response.url)
    for ref in refs:
        url = urljoin(page, ref)
        assert url.startswith("http://testserver/"), (ref, url)
        asset = await client.get(url)
        assert asset.status_code == 200, url
        if url.endswith("/openapi.json"):
            assert asset.json()["paths"]
            continue
        expected = next(v for ext, v in _CONTENT_TYPES.items() if url.endswith(ext))
        assert expected in asset.headers["content-type"], (url, asset.headers["content-type"])
        assert asset.content


async def test_docs_urls_are_relative_so_a_path_prefix_works(client):
    """The page's URLs are relative: behind a proxy at /gw they resolve under /gw."""
    html = (await client.get("/docs")).text
    for ref in referenced_urls(html):
        assert urljoin("https://proxy.example/gw/docs", ref).startswith(
            "https://proxy.example/gw/"
        ), ref


async def test_unknown_docs_asset_is_problem_404(client):
    """A missing file under /docs/static/ is a 404 problem+json, like any unknown path."""
    response = await client.get("/docs/static/nope.js")
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == "not_found"


@pytest.mark.parametrize("path", ["/docs", "/docs/static/swagger-ui.css", "/openapi.json"])
async def test_production_serves_no_docs(settings_factory, client_for, path):
    """In production (DOCS_ENABLED unset) /docs, its assets and /openapi.json are 404s."""
    async with client_for(settings_factory(**PRODUCTION)) as client:
        response = await client.get(path)
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == "not_found"


async def test_production_with_docs_enabled_serves_docs(settings_factory, client_for):
    """DOCS_ENABLED=true turns /docs, its assets and /openapi.json on in production."""
    async with client_for(settings_factory(**PRODUCTION, docs_enabled=True)) as client:
        for path in ("/docs", "/docs/static/swagger-ui-bundle.js", "/openapi.json"):
            assert (await client.get(path)).status_code == 200, path
