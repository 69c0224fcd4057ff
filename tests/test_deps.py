"""Routes get their context through FastAPI dependencies: the seam is real and overridable."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from app.deps import get_caller, get_services
from tests.helpers import API_KEYS, KEY_A, VALID


@pytest.fixture
async def authed(settings_factory, client_for):
    async with client_for(settings_factory(api_keys=API_KEYS)) as client:
        yield client


async def test_caller_dependency_can_be_overridden(authed, fake_plivo):
    """The send route asks `get_caller` who is calling: an override decides, no key needed."""
    authed.fastapi_app.dependency_overrides[get_caller] = lambda: "override"
    try:
        sent = await authed.post("/api/mms/send", json=VALID)
        assert sent.status_code == 200
        listed = (await authed.get("/api/mms")).json()["items"]
    finally:
        authed.fastapi_app.dependency_overrides.clear()
    assert [m["messageUuid"] for m in listed] == sent.json()["messageUuid"]
    # The override is gone: a stranger is refused again, and alpha does not see the message.
    assert (await authed.post("/api/mms/send", json=VALID)).status_code == 401
    mine = await authed.get("/api/mms", headers={"X-API-Key": KEY_A})
    assert mine.json()["items"] == []


async def test_services_dependency_can_be_overridden(client, fake_plivo):
    """Every route reads the lifespan's services through `get_services`, never app.state."""
    draining = dataclasses.replace(client.services, draining=True)
    client.fastapi_app.dependency_overrides[get_services] = lambda: draining
    try:
        response = await client.get("/ready")
    finally:
        client.fastapi_app.dependency_overrides.clear()
    assert response.status_code == 503 and "draining" in response.json()["detail"]
    assert (await client.get("/ready")).status_code == 200


async def test_stranger_gets_401_before_the_body_is_read(authed):
    """Authentication runs before the route touches the body: not one body message is
    received from a caller without a valid key."""
    received: list[Any] = []
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        received.append(1)
        return {"type": "http.request", "body": b'{"to": "+14155550100"}', "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/api/mms/send",
        "raw_path": b"/api/mms/send",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"application/json"), (b"content-length", b"22")],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }
    await authed.app_running(scope, receive, send)
    assert sent[0]["status"] == 401
    assert received == []
