"""A real browser renders /docs from the running service with every other host unreachable."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.server import ROOT, Server, base_env

pytestmark = pytest.mark.e2e

ARTIFACTS = ROOT / "test-artifacts"  # git-ignored; CI keeps what the browser saw
# One (method, path) per rendered operation block: the block's class, then its summary path.
_OPERATION = re.compile(r'class="opblock opblock-(\w+)\b.*?data-path="([^"]+)"', re.S)


@pytest.fixture
def chromium() -> str:
    path = shutil.which("chromium")
    if path is None:
        # On a laptop the check is optional; in CI a missing browser must not pass silently.
        if os.environ.get("CI") == "true":
            pytest.fail("chromium is required in CI (.ci/run installs it) but is not on PATH")
        pytest.skip("chromium is not on PATH (apt-get install chromium)")
    return path


@pytest.fixture
def server(fake_plivo, tmp_path) -> Iterator[Server]:
    env = base_env(
        fake_plivo.url, DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path}/mms.db", DOCS_ENABLED="true"
    )
    server = Server(env, tmp_path / "server.log")
    try:
        yield server.wait_healthy()
    finally:
        server.kill()


def page_requests(net_log: Path, origin: str) -> list[str]:
    """URLs the page asked for (Chromium's own background requests have no page initiator)."""
    log = json.loads(net_log.read_text())
    start_job = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    return [
        event["params"]["url"]
        for event in log["events"]
        if event["type"] == start_job and event.get("params", {}).get("initiator") == origin
    ]


def test_chromium_renders_the_operations_offline(chromium, server, tmp_path):
    """Headless Chromium, with only 127.0.0.1 resolvable, renders every operation of /docs."""
    ARTIFACTS.mkdir(exist_ok=True)
    screenshot = ARTIFACTS / "docs.png"
    screenshot.unlink(missing_ok=True)
    net_log = tmp_path / "net-log.json"
    command = [
        chromium,
        "--headless",
        "--no-sandbox",  # CI runs as root, where Chromium's sandbox refuses to start
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'profile'}",
        # Every host but the service fails to resolve: a CDN reference would break the page.
        "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
        "--virtual-time-budget=10000",  # lets Swagger UI fetch the spec and render
        f"--log-net-log={net_log}",
        "--window-size=1280,2000",
        f"--screenshot={screenshot}",
        "--dump-dom",
        f"{server.url}/docs",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-3000:]

    operations = set(_OPERATION.findall(result.stdout))
    assert {("post", "/api/mms/send"), ("get", "/health")} <= operations, result.stdout[-3000:]
    assert screenshot.stat().st_size > 10_000  # a blank page is a few hundred bytes

    # Stronger than "it rendered": the page did not even try to load anything from elsewhere.
    requested = page_requests(net_log, server.url)
    assert f"{server.url}/docs/static/swagger-ui-bundle.js" in requested, requested
    assert f"{server.url}/openapi.json" in requested, requested
    assert all(url.startswith(f"{server.url}/") for url in requested), requested
