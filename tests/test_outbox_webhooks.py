"""The outbox's status changes are webhook events like any other: an outbox send's
`queued`, a caller's cancellation — and never `scheduled` (the 202 said so)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from tests.helpers import VALID
from tests.test_webhooks import A, hooked, receiver, statuses, until  # noqa: F401 (fixtures)


async def test_an_outbox_send_is_a_queued_event_and_scheduled_is_none(
    hooked, client_for, receiver, fake_plivo, store_url
):
    async with client_for(hooked(database_url=store_url)) as client:
        response = await client.post(
            "/api/mms/send", json=VALID, headers={**A, "Prefer": "respond-async"}
        )
        assert response.status_code == 202
        message_id = response.json()["id"]
        await until(lambda: "queued" in statuses(receiver, "/alpha"))
        await until(lambda: "queued" in statuses(receiver, "/all"))
    events = receiver.of_type("message.status", "/alpha")
    assert [e.payload["data"]["status"] for e in events] == ["queued"]
    assert events[0].payload["data"]["id"] == message_id
    assert "scheduled" not in statuses(receiver, "/all")
    assert len(fake_plivo.sends()) == 1


async def test_a_canceled_scheduled_message_is_a_canceled_event(
    hooked, client_for, receiver, fake_plivo, store_url
):
    later = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    async with client_for(hooked(database_url=store_url)) as client:
        response = await client.post("/api/mms/send", json={**VALID, "send_at": later}, headers=A)
        assert response.status_code == 202
        message_id = response.json()["id"]
        deleted = await client.delete(f"/api/mms/{message_id}", headers=A)
        assert deleted.status_code == 200
        await until(lambda: "canceled" in statuses(receiver, "/alpha"))
    (event,) = receiver.of_type("message.status", "/alpha")
    assert event.payload["data"]["status"] == "canceled"
    assert event.payload["data"]["cancelReason"] == "caller"
    assert fake_plivo.sends() == []
