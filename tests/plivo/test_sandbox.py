"""Sandbox mode: no Plivo account needed; magic numbers end in Plivo's common failures."""

from __future__ import annotations

import pytest

from tests.helpers import VALID


@pytest.fixture
def sandbox_settings(settings_factory):
    return settings_factory(
        plivo_auth_id=None, plivo_auth_token=None, plivo_sender_number=None, plivo_timeout_seconds=3
    )


async def test_sandbox_sends_without_plivo(sandbox_settings, client_for, fake_plivo):
    async with client_for(sandbox_settings) as client:
        health = await client.get("/health")
        response = await client.post("/api/mms/send", json=VALID)
    assert health.json()["mode"] == "sandbox"
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"message", "messageUuid", "apiId"} and len(body["messageUuid"]) == 1
    assert fake_plivo.calls == []  # nothing left the process


@pytest.mark.parametrize(
    ("suffix", "status", "code"),
    [
        ("0400", 400, "plivo_rejected"),
        ("0401", 502, "upstream_auth_failed"),
        ("0429", 503, "upstream_rate_limited"),
        ("0500", 502, "upstream_error"),
        ("0502", 502, "upstream_error"),
        ("0503", 503, "upstream_unavailable"),
        ("0504", 504, "upstream_timeout"),
    ],
)
async def test_magic_numbers(sandbox_settings, settings_factory, client_for, suffix, status, code):
    settings = sandbox_settings
    if suffix == "0504":
        settings = settings.model_copy(update={"plivo_timeout_seconds": 0.3})
    async with client_for(settings) as client:
        response = await client.post("/api/mms/send", json={**VALID, "to": f"+1415555{suffix}"})
    assert response.status_code == status
    assert response.json()["code"] == code


async def test_sandbox_is_loud_at_startup(sandbox_settings, client_for, capfd):
    settings = sandbox_settings.model_copy(update={"log_level": "info"})
    async with client_for(settings):
        pass
    assert "SANDBOX MODE" in capfd.readouterr().out


ENDINGS = {  # last four digits -> (final status, error code)
    "0100": ("delivered", None),
    "0610": ("failed", "50"),
    "0620": ("undelivered", "80"),
    "0630": ("sent", None),
}


async def test_simulated_deliveries_go_through_the_callback_service(sandbox_settings, client_for):
    """queued -> sent -> final within seconds, visible through GET like real callbacks; every
    ending at once (each message's simulation runs on its own timers)."""
    import asyncio

    async with client_for(sandbox_settings) as client:
        uuids = {}
        for suffix in ENDINGS:
            sent = await client.post("/api/mms/send", json={**VALID, "to": f"+1415555{suffix}"})
            uuids[suffix] = sent.json()["messageUuid"][0]
            assert (await client.get(f"/api/mms/{uuids[suffix]}")).json()["status"] == "queued"

        async def statuses():
            return {
                suffix: (await client.get(f"/api/mms/{uuid}")).json()["status"]
                for suffix, uuid in uuids.items()
            }

        deadline = asyncio.get_running_loop().time() + 15
        while await statuses() != {suffix: final for suffix, (final, _) in ENDINGS.items()}:
            assert asyncio.get_running_loop().time() < deadline, await statuses()
            await asyncio.sleep(0.1)
    # The shutdown waited for the simulations in progress: nothing comes after this.
    async with client_for(sandbox_settings) as client:
        messages = {s: (await client.get(f"/api/mms/{u}")).json() for s, u in uuids.items()}
    for suffix, (final, code) in ENDINGS.items():
        message = messages[suffix]
        assert (message["status"], message["errorCode"]) == (final, code), suffix
        expected = ["sent"] if final == "sent" else ["sent", final]
        assert [e["status"] for e in message["events"]] == expected, suffix
