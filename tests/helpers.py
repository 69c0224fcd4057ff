"""Shared builders for the tests: the request every test sends, the API keys, headers, an
in-process client, a real server's send, waiting for a condition, an operator's command,
SQL as the superuser.

Fixtures live in conftest.py; plain values and functions live here, so tests import them
from one module (conftest.py re-exports the old names)."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.loopback import http_post
from tests.server import ROOT, base_env

SENDER = "+14155550000"
VALID = {"to": "+14155550100", "media_urls": ["https://example.com/a.png"], "text": "hello"}

KEY_A = "alpha-0123456789abcdef"
KEY_B = "bravo-0123456789abcdef"
API_KEYS = f"alpha:{KEY_A},bravo:{KEY_B}"
AS_ALPHA = {"X-API-Key": KEY_A}


def keyed(key: str, api_key: str = KEY_A) -> dict[str, str]:
    """Headers for a send with an Idempotency-Key, as the caller of `api_key`."""
    return {"X-API-Key": api_key, "Idempotency-Key": key}


def asgi_client(app: Any, client_ip: str = "127.0.0.1") -> httpx.AsyncClient:
    """An HTTP client that talks to the app in process, as `client_ip`."""
    transport = httpx.ASGITransport(app=app, client=(client_ip, 50000))
    return httpx.AsyncClient(transport=transport, base_url="http://testserver")


def post_send(
    server: Any,
    body: dict[str, Any] = VALID,
    headers: dict[str, str] = AS_ALPHA,
    timeout: float = 30.0,
) -> httpx.Response:
    """POST /api/mms/send to a real `python -m app` (tests/server.py)."""
    return http_post(f"{server.url}/api/mms/send", json=body, headers=headers, timeout=timeout)


def wait_for(condition: Callable[[], bool], timeout: float = 15.0, every: float = 0.05) -> None:
    """Poll `condition` until it holds; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(every)
    raise AssertionError("condition not met in time")


@dataclass
class Done:
    """What an operator's command (`python -m app <command> ...`) exited with and printed."""

    returncode: int
    stdout: str
    stderr: str


def command_env(store_url: str) -> dict[str, str]:
    """The environment an operator's command runs with: the store at `store_url`."""
    return base_env("http://127.0.0.1:9", DATABASE_URL=store_url)


def app_process(store_url: str, *argv: str) -> Done:
    """`python -m app <argv>` as a process of its own (the conftest fixture `app_command`
    runs the same entry point in the test process)."""
    result = subprocess.run(
        [sys.executable, "-m", "app", *argv],
        cwd=ROOT,
        env=command_env(store_url),
        capture_output=True,
        text=True,
        timeout=60,
    )
    return Done(result.returncode, result.stdout, result.stderr)


def startup_refusal(env: dict[str, str], cwd: Path) -> str:
    """Start `python -m app` with exactly `env`, from `cwd` (a folder with no .env file): it
    must exit 2 with one line on stderr and no traceback, before listening. Returns the line."""
    result = subprocess.run(
        [sys.executable, "-m", "app"],
        cwd=cwd,
        env={**env, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    return lines[0]


PSQL_FLAGS = ("-v", "ON_ERROR_STOP=1", "-qAtc")


def psql(sql: str, database: str = "test") -> str:
    """Run SQL as the postgres superuser on the machine's PostgreSQL (trust auth)."""
    result = subprocess.run(
        ["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", database, *PSQL_FLAGS, sql],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return result.stdout
