"""The real process: `python -m app` sends through the fake, serves /health, exits 0 on SIGTERM."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import VALID
from tests.server import Server, base_env

pytestmark = pytest.mark.e2e


@pytest.fixture
def server_factory(fake_plivo, tmp_path):
    started: list[Server] = []

    def start(**overrides) -> Server:
        env = base_env(fake_plivo.url, DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path}/mms.db")
        env.update({k.upper(): str(v) for k, v in overrides.items()})
        server = Server(env, tmp_path / f"server{len(started)}.log")
        started.append(server)
        return server.wait_healthy()

    yield start
    for server in started:
        server.kill()


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
