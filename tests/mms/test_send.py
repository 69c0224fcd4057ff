"""POST /api/mms/send: what Plivo receives and what the caller gets back."""

from __future__ import annotations

import base64

import httpx

from tests.fakeplivo import AUTH_ID, AUTH_TOKEN, FakePlivo
from tests.helpers import SENDER, VALID


async def test_success_returns_the_queued_shape(client: httpx.AsyncClient, fake_plivo: FakePlivo):
    """A 202 from Plivo becomes 200 with exactly message, messageUuid, apiId."""
    response = await client.post("/api/mms/send", json=VALID)
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"message", "messageUuid", "apiId"}
    assert body["message"] == "message(s) queued"
    assert len(body["messageUuid"]) == 1 and body["messageUuid"][0] in fake_plivo.mdrs
    assert body["apiId"]


async def test_plivo_receives_its_exact_wire_format(
    client: httpx.AsyncClient, fake_plivo: FakePlivo
):
    """JSON body with src/dst/text/type/media_urls, basic auth, to the account's Message URL."""
    await client.post(
        "/api/mms/send", json={**VALID, "media_urls": ["https://e.x/1.png", "http://e.x/2.gif"]}
    )
    [call] = fake_plivo.sends()
    assert call.path == f"/v1/Account/{AUTH_ID}/Message/"
    assert call.content_type == "application/json"
    expected_auth = "Basic " + base64.b64encode(f"{AUTH_ID}:{AUTH_TOKEN}".encode()).decode()
    assert call.authorization == expected_auth
    assert call.json == {
        "src": SENDER,
        "dst": "+14155550100",
        "text": "hello",
        "type": "mms",
        "media_urls": ["https://e.x/1.png", "http://e.x/2.gif"],
    }


async def test_callback_url_sent_only_with_public_base_url(
    settings_factory, client_for, fake_plivo
):
    """With PUBLIC_BASE_URL, Plivo is asked to POST status callbacks to /api/mms/status."""
    settings = settings_factory(public_base_url="https://mms.example.com/")
    async with client_for(settings) as client:
        await client.post("/api/mms/send", json=VALID)
    [call] = fake_plivo.sends()
    assert call.json["url"] == "https://mms.example.com/api/mms/status"
    assert call.json["method"] == "POST"


async def test_request_id_is_echoed_or_generated(client: httpx.AsyncClient):
    """A safe incoming X-Request-ID is kept; unsafe or oversized ones are replaced."""
    kept = await client.get("/health", headers={"X-Request-ID": "abc-123.x:y_z"})
    assert kept.headers["x-request-id"] == "abc-123.x:y_z"
    for bad in ["a b", "x" * 129, b"\xe9vil", "<script>", ""]:
        replaced = await client.get("/health", headers={"X-Request-ID": bad})
        assert replaced.headers["x-request-id"] != bad
        assert len(replaced.headers["x-request-id"]) == 32
    generated = await client.post("/api/mms/send", json={})
    assert generated.json()["requestId"] == generated.headers["x-request-id"]


async def test_health_is_cheap_and_says_live(client: httpx.AsyncClient):
    response = await client.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "mode": "live", "version": "0.1.0"}
