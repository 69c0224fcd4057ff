"""API keys: who may spend the account's money."""

from __future__ import annotations

import hmac

import pytest

from app.auth import Authenticator
from app.config import parse_api_keys
from tests.helpers import API_KEYS, KEY_A, VALID


@pytest.fixture
async def authed(settings_factory, client_for):
    async with client_for(settings_factory(api_keys=API_KEYS)) as client:
        yield client


async def test_auth_off_when_no_keys(client, fake_plivo):
    """API_KEYS empty (development): sends need no key."""
    assert (await client.post("/api/mms/send", json=VALID)).status_code == 200


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong-0123456789abcdef"},
        {"Authorization": f"Basic {KEY_A}"},
        {"Authorization": "Bearer "},
        {"Authorization": "Bearer"},
        {"Authorization": KEY_A},
        {"X-API-Key": "wrong-0123456789abcdef"},
        {"X-API-Key": ""},
        {"X-API-Key": KEY_A[:-1]},
        {"X-API-Key": KEY_A + "x"},
        {"Authorization": "Bearer nope", "X-API-Key": KEY_A},
    ],
    ids=[
        "no key",
        "wrong bearer",
        "basic scheme",
        "empty bearer",
        "bare bearer",
        "no scheme",
        "wrong x-api-key",
        "empty x-api-key",
        "prefix of a key",
        "key plus a char",
        "wrong bearer wins over x-api-key",
    ],
)
async def test_401_paths(authed, fake_plivo, headers):
    response = await authed.post("/api/mms/send", json=VALID, headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    body = response.json()
    assert body["code"] == "unauthorized" and body["status"] == 401
    assert fake_plivo.sends() == []


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": f"Bearer {KEY_A}"},
        {"authorization": f"bearer {KEY_A}"},
        {"X-API-Key": KEY_A},
    ],
    ids=["bearer", "lowercase bearer", "x-api-key"],
)
async def test_valid_key_sends(authed, fake_plivo, headers):
    response = await authed.post("/api/mms/send", json=VALID, headers=headers)
    assert response.status_code == 200
    assert len(fake_plivo.sends()) == 1


async def test_401_before_validation(authed):
    """A stranger learns nothing about the body: no key and a bad body is still 401."""
    response = await authed.post(
        "/api/mms/send", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 401


async def test_bare_secret_key_is_named_by_its_hash(settings_factory, client_for, fake_plivo):
    secret = "0123456789abcdef0123"
    async with client_for(settings_factory(api_keys=secret)) as client:
        response = await client.post("/api/mms/send", json=VALID, headers={"X-API-Key": secret})
    assert response.status_code == 200


async def test_probes_need_no_key(authed):
    assert (await authed.get("/health")).status_code == 200
    assert (await authed.get("/openapi.json")).status_code == 200


def test_every_key_is_compared_in_constant_time(monkeypatch):
    """No early exit: the first key matching still compares against all of them."""
    calls = []
    real = hmac.compare_digest

    def counting(a, b):
        calls.append(1)
        return real(a, b)

    monkeypatch.setattr("app.auth.hmac.compare_digest", counting)
    auth = Authenticator(parse_api_keys(API_KEYS + ",charlie:0123456789abcdef0000"))
    assert auth.identify(KEY_A) == "alpha"
    assert len(calls) == 3
