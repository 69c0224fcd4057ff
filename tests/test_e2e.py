"""The real process: `python -m app` sends through the fake, serves /health, exits 0 on SIGTERM."""

from __future__ import annotations

import pytest

from tests.helpers import VALID, app_process
from tests.loopback import http_get, http_post

pytestmark = pytest.mark.e2e


def test_a_send_is_recorded_before_its_200_and_sigterm_exits_zero(server_factory, fake_plivo):
    """End to end: a send reaches the fake and is recorded before the 200 (kill -9 right
    after it, restart: the message is there); /health answers; SIGTERM exits 0 after a drain."""
    server = server_factory()
    response = http_post(f"{server.url}/api/mms/send", json=VALID, timeout=10)
    assert response.status_code == 200, response.text
    message_uuid = response.json()["messageUuid"][0]
    assert message_uuid in fake_plivo.mdrs
    server.proc.kill()
    server.proc.wait(10)
    restarted = server_factory()
    lookup = http_get(f"{restarted.url}/api/mms/{message_uuid}", timeout=10)
    assert lookup.status_code == 200 and lookup.json()["status"] == "queued"
    health = http_get(f"{restarted.url}/health", timeout=5)
    assert health.json()["mode"] == "live"
    assert restarted.terminate() == 0, restarted.logs()
    assert '"draining"' in restarted.logs()
    assert "Traceback" not in server.logs() + restarted.logs()


def test_sandbox_process_starts_loudly_and_sigterm_drains_its_deliveries(
    server_factory, fake_plivo
):
    """No credentials in development: sandbox mode, said at startup and in /health; nothing
    reaches Plivo. Shutdown waits for the service's own tasks: the simulated delivery lands."""
    sandbox = {"PLIVO_AUTH_ID": "", "PLIVO_AUTH_TOKEN": "", "PLIVO_SENDER_NUMBER": ""}
    server = server_factory(**sandbox)
    assert http_get(f"{server.url}/health", timeout=5).json()["mode"] == "sandbox"
    sent = http_post(f"{server.url}/api/mms/send", json=VALID, timeout=10)
    assert sent.status_code == 200
    assert server.terminate() == 0
    assert "SANDBOX MODE" in server.logs()
    restarted = server_factory(**sandbox)
    message = http_get(f"{restarted.url}/api/mms/{sent.json()['messageUuid'][0]}").json()
    assert message["status"] == "delivered"
    assert fake_plivo.calls == []


def test_migrate_command_applies_migrations_alone(tmp_path):
    """`python -m app migrate` creates the schema and exits 0 without serving."""
    import sqlite3

    result = app_process(f"sqlite+aiosqlite:///{tmp_path}/m.db", "migrate")
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


# WEB_CONCURRENCY=2 (two workers start, share their metrics, exit 0, and warn about limits
# kept in memory or not) is in tests/test_metrics.py: one start of two workers per case.
