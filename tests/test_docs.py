"""/docs: Swagger UI from vendored assets (no CDN), off in production unless DOCS_ENABLED;
and the written docs: the README's size and layout, links that resolve, no outside references."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from urllib.parse import urljoin

import pytest

from tests.helpers import API_KEYS

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
README_MAX_BYTES = 12_288

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


# The written documentation -------------------------------------------------------------------
def tracked_files() -> list[str]:
    try:
        result = subprocess.run(
            ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return result.stdout.splitlines()


def readme_layout() -> dict[str, set[str]]:
    """The README's layout block: {"": top-level names, "app": names under app/}."""
    text = README.read_text(encoding="utf-8")
    section = text.split("\n## Layout\n", 1)[1]
    block = section.split("```\n", 2)[1]
    layout: dict[str, set[str]] = {"": set(), "app": set()}
    parent = ""
    for line in block.splitlines():
        if not line.strip():
            continue
        name = line.split()[0].rstrip("/")
        if not line.startswith(" "):
            layout[""].add(name)
            parent = name
        elif line.startswith("  ") and not line.startswith("   ") and parent == "app":
            layout["app"].add(name)
    return layout


def test_readme_is_at_most_12_kib():
    size = len(README.read_bytes())
    assert size <= README_MAX_BYTES, f"README.md is {size} bytes; move detail into docs/"


def test_readme_layout_lists_exactly_the_top_level_entries():
    """The tracked top-level entries (as `ls` shows them, plus any dotfile the README names)."""
    tracked = {path.split("/")[0] for path in tracked_files()}
    listed = readme_layout()[""]
    visible = {name for name in tracked if not name.startswith(".")}
    listed_visible = {name for name in listed if not name.startswith(".")}
    assert listed_visible == visible, (
        f"README layout misses {sorted(visible - listed_visible)}, "
        f"names gone {sorted(listed_visible - visible)}"
    )
    assert listed - listed_visible <= tracked


def test_readme_layout_lists_exactly_the_app_package():
    present = {
        p.name for p in (ROOT / "app").iterdir() if not p.name.startswith((".", "__pycache__"))
    }
    listed = readme_layout()["app"]
    assert listed == present, (
        f"README layout misses {sorted(present - listed)}, names gone {sorted(listed - present)}"
    )


_LINK = re.compile(r"\]\(([^)\s]+)\)")


def anchors(document: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    headings = re.findall(r"^#{1,6} (.+)$", document.read_text(encoding="utf-8"), re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def test_relative_links_in_the_docs_resolve():
    documents = [README, ROOT / "benchmarks" / "README.md", *sorted(ROOT.glob("docs/**/*.md"))]
    documents += sorted((ROOT / "benchmarks" / "peer").glob("*.md"))
    broken = []
    for document in documents:
        for target in _LINK.findall(document.read_text(encoding="utf-8")):
            if target.startswith(("http://", "https://", "mailto:")):
                continue
            if target.startswith("#"):
                target = document.name + target
            file, _, anchor = target.partition("#")
            path = (document.parent / file).resolve()
            if not path.exists() or (anchor and anchor not in anchors(path)):
                broken.append(f"{document.relative_to(ROOT)} -> {target}")
    assert broken == []


def test_nothing_refers_to_files_outside_the_repository():
    outside = "../" + "shared"  # spelled apart so this file does not match itself
    hits = []
    for name in tracked_files():
        path = ROOT / name
        if name.startswith("app/static/") or path.suffix in {".png", ".lock"} or not path.is_file():
            continue
        if outside in path.read_text(encoding="utf-8", errors="replace"):
            hits.append(name)
    assert hits == []
