"""The real process: `python -m app` sends through the fake, serves /health, exits 0 on SIGTERM."""

from __future__ import annotations

import httpx
import pytest

from tests.helpers import VALID
from tests.server import base_env

pytestmark = pytest.mark.e2e


def test_send_health_and_sigterm_exit_zero(server_factory, fake_plivo):
    """End to end: a send reaches the fake, /health answers, SIGTERM exits 0 after a drain."""
    server = server_factory()
    response = httpx.post(f"{server.url}/api/mms/send", json=VALID, timeout=10)
    assert response.status_code == 200, response.text
    assert response.json()["messageUuid"][0] in fake_plivo.mdrs
    health = httpx.get(f"{server.url}/health", timeout=5)
    assert health.json()["mode"] == "live"
    assert server.terminate() == 0, server.logs()
    assert "Traceback" not in server.logs()


def test_two_workers_start_and_exit_zero(server_factory, fake_plivo):
    server = server_factory(WEB_CONCURRENCY=2)
    for _ in range(4):
        assert httpx.post(f"{server.url}/api/mms/send", json=VALID, timeout=10).status_code == 200
    assert len(fake_plivo.sends()) == 4
    assert server.terminate() == 0, server.logs()


def test_record_is_written_before_the_200(server_factory, fake_plivo):
    """kill -9 right after a 200, restart: the message is there."""
    server = server_factory()
    response = httpx.post(f"{server.url}/api/mms/send", json=VALID, timeout=10)
    assert response.status_code == 200
    server.proc.kill()
    server.proc.wait(10)
    restarted = server_factory()
    message_uuid = response.json()["messageUuid"][0]
    lookup = httpx.get(f"{restarted.url}/api/mms/{message_uuid}", timeout=10)
    assert lookup.status_code == 200 and lookup.json()["status"] == "queued"


def test_sandbox_process_starts_loudly(server_factory, fake_plivo):
    """No credentials in development: sandbox mode, said at startup and in /health."""
    server = server_factory(PLIVO_AUTH_ID="", PLIVO_AUTH_TOKEN="", PLIVO_SENDER_NUMBER="")
    assert httpx.get(f"{server.url}/health", timeout=5).json()["mode"] == "sandbox"
    assert httpx.post(f"{server.url}/api/mms/send", json=VALID, timeout=10).status_code == 200
    assert server.terminate() == 0
    assert "SANDBOX MODE" in server.logs()
    assert fake_plivo.calls == []


def test_migrate_command_applies_migrations_alone(tmp_path, fake_plivo):
    """`python -m app migrate` creates the schema and exits 0 without serving."""
    import sqlite3
    import subprocess
    import sys

    from tests.server import ROOT

    env = base_env(fake_plivo.url, DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path}/m.db")
    result = subprocess.run(
        [sys.executable, "-m", "app", "migrate"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "schema at revision" in result.stdout
    tables = {
        r[0]
        for r in sqlite3.connect(tmp_path / "m.db").execute(
            "SELECT name FROM sqlite_master WHERE type='table'"
        )
    }
    assert {
        "messages",
        "events",
        "callback_nonces",
        "idempotency_keys",
        "alembic_version",
    } <= tables


def test_several_workers_with_memory_limits_warn_loudly(server_factory):
    """WEB_CONCURRENCY=2 and memory:// limits: each worker counts alone, and the log says so."""
    server = server_factory(WEB_CONCURRENCY=2)
    assert server.terminate() == 0
    assert "RATE LIMITS ARE PER WORKER" in server.logs()


def test_several_workers_with_redis_limits_do_not_warn(server_factory, redis_url):
    server = server_factory(WEB_CONCURRENCY=2, RATE_LIMIT_STORAGE_URL=redis_url)
    assert server.terminate() == 0
    assert "RATE LIMITS ARE PER WORKER" not in server.logs()
