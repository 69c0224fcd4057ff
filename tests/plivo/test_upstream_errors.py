"""Every upstream row of the error table (docs/api.md), against the fake Plivo on real sockets."""

from __future__ import annotations

import socket
import time

import pytest

from tests import fakeplivo as fp
from tests.helpers import VALID


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


ROWS = [
    # (scripted actions, status, code, plivo calls, has plivoApiId)
    ([fp.status(400, "'1415' is not a valid phone number.")], 400, "plivo_rejected", 1, True),
    ([fp.status(422, "unprocessable")], 400, "plivo_rejected", 1, True),
    ([fp.status(401)], 502, "upstream_auth_failed", 1, True),
    ([fp.status(403)], 502, "upstream_auth_failed", 1, True),
    ([fp.status(500)], 502, "upstream_error", 1, True),
    ([fp.status(502)], 502, "upstream_error", 1, True),
    ([fp.status(504)], 502, "upstream_error", 1, True),
    ([fp.status(404)], 502, "upstream_error", 1, True),
    ([fp.raw(202, b"<html>not json</html>")], 502, "upstream_error", 1, False),
    ([fp.raw(500, b"oops")], 502, "upstream_error", 1, False),
    ([fp.drop()], 502, "upstream_error", 1, False),
    ([fp.status(429, retry_after="0")] * 3, 503, "upstream_rate_limited", 3, True),
    ([fp.status(503, retry_after="0")] * 3, 503, "upstream_unavailable", 3, True),
]


@pytest.mark.parametrize(("actions", "status", "code", "calls", "has_api_id"), ROWS)
async def test_upstream_row(client, fake_plivo, actions, status, code, calls, has_api_id):
    """Plivo's answer maps to the documented status and code; retries only where safe."""
    fake_plivo.script(*actions)
    response = await client.post("/api/mms/send", json=VALID)
    body = response.json()
    assert response.status_code == status, body
    assert response.headers["content-type"] == "application/problem+json"
    assert body["code"] == code and body["status"] == status
    assert body["requestId"] == response.headers["x-request-id"]
    assert ("plivoApiId" in body) is has_api_id
    if has_api_id:
        assert body["plivoApiId"] == actions[-1].body["api_id"]
    assert len(fake_plivo.sends()) == calls
    if status == 503:
        assert int(response.headers["retry-after"]) >= 1


async def test_plivo_error_text_is_the_detail(client, fake_plivo):
    fake_plivo.script(fp.status(400, "'1415' is not a valid phone number."))
    response = await client.post("/api/mms/send", json=VALID)
    assert response.json()["detail"] == "'1415' is not a valid phone number."


async def test_retry_after_from_plivo_is_passed_on(client, fake_plivo):
    fake_plivo.script(*[fp.status(429, retry_after="0")] * 2, fp.status(429, retry_after="7"))
    response = await client.post("/api/mms/send", json=VALID)
    assert response.status_code == 503
    assert response.headers["retry-after"] == "7"


async def test_refused_before_sending_is_unavailable(settings_factory, client_for, fake_plivo):
    """Nothing listening: ClientConnectorError -> retried, then 503 upstream_unavailable."""
    settings = settings_factory(plivo_api_url=f"http://127.0.0.1:{_closed_port()}/v1")
    async with client_for(settings) as client:
        response = await client.post("/api/mms/send", json=VALID)
    assert response.status_code == 503
    assert response.json()["code"] == "upstream_unavailable"
    assert response.headers["retry-after"]


async def test_dropped_after_sending_is_not_retried(client, fake_plivo):
    """The request reached Plivo before the connection broke: one call only, 502."""
    fake_plivo.script(fp.drop(), fp.drop(), fp.drop())
    response = await client.post("/api/mms/send", json=VALID)
    assert response.status_code == 502 and response.json()["code"] == "upstream_error"
    assert len(fake_plivo.sends()) == 1


async def test_hung_plivo_times_out(settings_factory, client_for, fake_plivo):
    """No answer within PLIVO_TIMEOUT_SECONDS -> 504 upstream_timeout, one call, never a hang."""
    fake_plivo.script(fp.hang())
    async with client_for(settings_factory(plivo_timeout_seconds=0.5)) as client:
        started = time.monotonic()
        response = await client.post("/api/mms/send", json=VALID)
        elapsed = time.monotonic() - started
    assert response.status_code == 504 and response.json()["code"] == "upstream_timeout"
    assert elapsed < 0.5 + 5  # the deadline plus a generous margin
    assert len(fake_plivo.sends()) == 1


async def test_transient_429_then_success(client, fake_plivo):
    """429 is retried (Plivo did not take the message) after its Retry-After, then succeeds."""
    fake_plivo.script(fp.status(429, retry_after="1"))
    started = time.monotonic()
    response = await client.post("/api/mms/send", json=VALID)
    assert response.status_code == 200
    assert time.monotonic() - started >= 0.9  # Retry-After honoured
    assert len(fake_plivo.sends()) == 2


async def test_500_is_never_retried(client, fake_plivo):
    fake_plivo.script(fp.status(500), fp.status(500))
    response = await client.post("/api/mms/send", json=VALID)
    assert response.status_code == 502
    assert len(fake_plivo.sends()) == 1
