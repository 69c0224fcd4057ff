"""Scheduled and asynchronous sends over HTTP: the 202, its validation, Idempotency-Key
replay, DELETE, lookups and listings, the outbox's room and the quota (both stores)."""

from __future__ import annotations

import asyncio
import re
import time
from datetime import UTC, datetime, timedelta

import pytest

from app import quiet_hours
from tests import fakeplivo as fp
from tests.helpers import API_KEYS, KEY_A, KEY_B, VALID

A = {"X-API-Key": KEY_A}
B = {"X-API-Key": KEY_B}
ASYNC = {**A, "Prefer": "respond-async"}
SEND = "/api/mms/send"
ISO_MS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


def later(**delta: float) -> str:
    return (datetime.now(UTC) + timedelta(**delta)).isoformat()


def ms_of(iso: str) -> int:
    return int(datetime.fromisoformat(iso).timestamp() * 1000)


@pytest.fixture
async def client(settings_factory, client_for, store_url):
    async with client_for(settings_factory(api_keys=API_KEYS, database_url=store_url)) as c:
        yield c


async def status_of(client, message_id: str, headers=A) -> dict:
    response = await client.get(f"/api/mms/{message_id}", headers=headers)
    assert response.status_code == 200, response.text
    return response.json()


async def wait_status(client, message_id: str, wanted: str, timeout: float = 20.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        message = await status_of(client, message_id)
        if message["status"] == wanted or time.monotonic() > deadline:
            assert message["status"] == wanted, message
            return message
        await asyncio.sleep(0.05)


# The 202 -----------------------------------------------------------------------------------
async def test_respond_async_is_202_then_the_outbox_sends_it(client, fake_plivo):
    before = int(time.time() * 1000)
    response = await client.post(SEND, json=VALID, headers=ASYNC)
    assert response.status_code == 202, response.text
    body = response.json()
    assert set(body) == {"id", "status", "sendAt"}
    assert body["status"] == "scheduled" and ISO_MS.fullmatch(body["sendAt"])
    assert before - 1000 <= ms_of(body["sendAt"]) <= int(time.time() * 1000) + 1000
    assert response.headers["location"] == f"/api/mms/{body['id']}"
    assert response.headers["preference-applied"] == "respond-async"
    assert response.headers["content-type"] == "application/json"
    sent = await wait_status(client, body["id"], "queued")
    assert sent["messageUuid"] and sent["sendAt"] == body["sendAt"]
    assert len(fake_plivo.sends()) == 1
    assert fake_plivo.sends()[0].json["dst"] == VALID["to"]


@pytest.mark.parametrize(
    "prefer", ["RESPOND-ASYNC", "wait=10, respond-async", "handling=lenient,respond-async;x=1"]
)
async def test_respond_async_anywhere_in_prefer(client, fake_plivo, prefer):
    response = await client.post(SEND, json=VALID, headers={**A, "Prefer": prefer})
    assert response.status_code == 202 and response.headers["preference-applied"] == "respond-async"


async def test_other_preferences_stay_synchronous(client, fake_plivo):
    response = await client.post(SEND, json=VALID, headers={**A, "Prefer": "return=minimal"})
    assert response.status_code == 200 and set(response.json()) == {
        "message",
        "messageUuid",
        "apiId",
    }


async def test_send_at_later_is_scheduled_shown_and_listed(client, fake_plivo):
    at = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=2)
    local = at.astimezone(datetime.now().astimezone().tzinfo).isoformat()
    response = await client.post(SEND, json={**VALID, "send_at": local}, headers=A)
    assert response.status_code == 202
    assert "preference-applied" not in response.headers
    body = response.json()
    assert body["sendAt"] == at.strftime("%Y-%m-%dT%H:%M:%S.000Z")
    message = await status_of(client, body["id"])
    assert message["status"] == "scheduled" and message["sendAt"] == body["sendAt"]
    assert message["messageUuid"] is None and message["cancelReason"] is None
    listed = await client.get("/api/mms", params={"status": "scheduled"}, headers=A)
    assert [m["id"] for m in listed.json()["items"]] == [body["id"]]
    await asyncio.sleep(0.3)
    assert fake_plivo.sends() == []


async def test_send_at_a_little_in_the_past_means_now(client, fake_plivo):
    response = await client.post(SEND, json={**VALID, "send_at": later(seconds=-30)}, headers=A)
    assert response.status_code == 202
    assert abs(ms_of(response.json()["sendAt"]) - time.time() * 1000) < 5000
    await wait_status(client, response.json()["id"], "queued")


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("send_at", "2026-12-24T09:00:00", "RFC 3339"),
        ("send_at", "tomorrow at nine", "RFC 3339"),
        ("send_at", "2026-02-30T09:00:00Z", "out of range"),
        ("send_at", 1767000000, "string"),
        ("send_at", "LATER_31D", "30 days"),
        ("send_at", "PAST_2M", "past"),
        ("quiet_hours", "yes", "boolean"),
        ("quiet_hours", 1, "boolean"),
    ],
)
async def test_bad_scheduling_fields_are_422_naming_the_field(
    client, fake_plivo, field, value, message
):
    if value == "LATER_31D":
        value = later(days=31)
    elif value == "PAST_2M":
        value = later(minutes=-2)
    response = await client.post(SEND, json={**VALID, field: value}, headers=A)
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["code"] == "validation_error"
    assert [e["field"] for e in body["errors"]] == [field]
    assert message in body["errors"][0]["message"]
    assert fake_plivo.sends() == []


async def test_quiet_hours_send_goes_inside_the_recipients_window(client, fake_plivo):
    response = await client.post(SEND, json={**VALID, "quiet_hours": True}, headers=A)
    assert response.status_code == 202
    send_at = datetime.fromisoformat(response.json()["sendAt"])
    window = quiet_hours.parse_window("08:00-21:00")
    assert quiet_hours.inside(window, quiet_hours.zones_for(VALID["to"]), send_at)
    assert send_at >= datetime.now(UTC) - timedelta(seconds=5)


# Idempotency -------------------------------------------------------------------------------
async def test_idempotency_key_stores_and_replays_the_202(client, fake_plivo):
    body = {**VALID, "send_at": later(hours=1)}
    headers = {**A, "Idempotency-Key": "sched-1"}
    first = await client.post(SEND, json=body, headers=headers)
    again = await client.post(SEND, json=body, headers={**headers, "Prefer": "respond-async"})
    assert first.status_code == again.status_code == 202
    assert again.json() == first.json()
    assert again.headers["idempotent-replayed"] == "true"
    assert again.headers["location"] == first.headers["location"]
    assert again.headers["preference-applied"] == "respond-async"  # Prefer: not fingerprinted
    listed = await client.get("/api/mms", params={"idempotencyKey": "sched-1"}, headers=A)
    assert len(listed.json()["items"]) == 1
    other = await client.post(SEND, json={**body, "text": "other"}, headers=headers)
    assert other.status_code == 422 and other.json()["code"] == "idempotency_key_reused"


async def test_replay_of_a_respond_async_send_after_it_went_out(client, fake_plivo):
    headers = {**ASYNC, "Idempotency-Key": "sched-2"}
    first = await client.post(SEND, json=VALID, headers=headers)
    await wait_status(client, first.json()["id"], "queued")
    again = await client.post(SEND, json=VALID, headers=headers)
    assert again.status_code == 202 and again.json() == first.json()
    assert len(fake_plivo.sends()) == 1


# DELETE ------------------------------------------------------------------------------------
async def test_delete_cancels_a_scheduled_message_once(client, fake_plivo):
    scheduled = await client.post(SEND, json={**VALID, "send_at": later(hours=1)}, headers=A)
    message_id = scheduled.json()["id"]
    canceled = await client.delete(f"/api/mms/{message_id}", headers=A)
    assert canceled.status_code == 200
    assert canceled.json()["status"] == "canceled"
    assert canceled.json()["cancelReason"] == "caller"
    again = await client.delete(f"/api/mms/{message_id}", headers=A)
    assert again.status_code == 200 and again.json()["status"] == "canceled"
    listed = await client.get("/api/mms", params={"status": "canceled"}, headers=A)
    assert [m["id"] for m in listed.json()["items"]] == [message_id]
    assert fake_plivo.sends() == []


async def test_delete_of_a_sent_message_is_409(client, fake_plivo):
    sent = await client.post(SEND, json=VALID, headers=A)
    response = await client.delete(f"/api/mms/{sent.json()['messageUuid'][0]}", headers=A)
    assert response.status_code == 409
    body = response.json()
    assert body["code"] == "not_cancelable" and body["status"] == 409
    assert response.headers["content-type"] == "application/problem+json"


@pytest.mark.parametrize("ident", ["nope", "0" * 32, "OTHER"])
async def test_delete_of_anything_else_is_404(client, fake_plivo, ident):
    if ident == "OTHER":
        other = await client.post(SEND, json={**VALID, "send_at": later(hours=1)}, headers=B)
        ident = other.json()["id"]
    response = await client.delete(f"/api/mms/{ident}", headers=A)
    assert response.status_code == 404 and response.json()["code"] == "not_found"


async def test_delete_needs_the_api_key(client, fake_plivo):
    response = await client.delete("/api/mms/" + "0" * 32)
    assert response.status_code == 401 and response.json()["code"] == "unauthorized"


# Checks at acceptance ----------------------------------------------------------------------
async def test_outbox_full_is_429(settings_factory, client_for, store_url, fake_plivo):
    settings = settings_factory(
        api_keys=API_KEYS, database_url=store_url, outbox_max_pending_per_key=2
    )
    async with client_for(settings) as client:
        body = {**VALID, "send_at": later(hours=1)}
        codes = [(await client.post(SEND, json=body, headers=A)).status_code for _ in range(3)]
        refused = await client.post(SEND, json=body, headers=A)
        other_key = await client.post(SEND, json=body, headers=B)
    assert codes == [202, 202, 429]
    assert refused.json()["code"] == "outbox_full" and refused.json()["status"] == 429
    assert other_key.status_code == 202


async def test_a_canceled_message_frees_its_room_in_the_outbox(
    settings_factory, client_for, store_url, fake_plivo
):
    settings = settings_factory(
        api_keys=API_KEYS, database_url=store_url, outbox_max_pending_per_key=2
    )
    async with client_for(settings) as client:
        body = {**VALID, "send_at": later(hours=1)}
        first = await client.post(SEND, json=body, headers=A)
        assert (await client.post(SEND, json=body, headers=A)).status_code == 202
        assert (await client.post(SEND, json=body, headers=A)).status_code == 429
        canceled = await client.delete(f"/api/mms/{first.json()['id']}", headers=A)
        again = await client.post(SEND, json=body, headers=A)
        full_again = await client.post(SEND, json=body, headers=A)
    assert canceled.status_code == 200
    assert again.status_code == 202
    assert full_again.status_code == 429 and full_again.json()["code"] == "outbox_full"


async def test_quota_is_counted_at_acceptance(settings_factory, client_for, fake_plivo):
    settings = settings_factory(api_keys=API_KEYS, daily_quota_per_key=1)
    async with client_for(settings) as client:
        first = await client.post(SEND, json={**VALID, "send_at": later(hours=1)}, headers=A)
        second = await client.post(SEND, json={**VALID, "send_at": later(hours=1)}, headers=A)
        sync = await client.post(SEND, json=VALID, headers=A)
    assert first.status_code == 202
    assert second.status_code == 429 and second.json()["code"] == "quota_exceeded"
    assert sync.json()["code"] == "quota_exceeded"
    assert fake_plivo.sends() == []


async def test_opted_out_recipient_is_refused_at_acceptance(client, fake_plivo):
    await client.post("/api/optouts", json={"number": VALID["to"]}, headers=A)
    response = await client.post(SEND, json=VALID, headers=ASYNC)
    assert response.status_code == 422 and response.json()["code"] == "recipient_opted_out"


async def test_openapi_declares_the_202_and_delete(client):
    schema = (await client.get("/openapi.json")).json()
    send = schema["paths"]["/api/mms/send"]["post"]["responses"]
    assert "202" in send and "429" in send
    assert "outbox_full" in send["429"]["description"]
    delete = schema["paths"]["/api/mms/{messageUuid}"]["delete"]["responses"]
    assert "not_cancelable" in delete["409"]["description"]
    statuses = schema["components"]["schemas"]["MessageStatus"]["enum"]
    assert statuses[0] == "scheduled" and statuses[-1] == "canceled"


async def test_fake_plivo_is_untouched_by_refusals(client, fake_plivo):
    fake_plivo.script(fp.status(500))
    response = await client.post(SEND, json={**VALID, "send_at": "x"}, headers=ASYNC)
    assert response.status_code == 422
    assert fake_plivo.sends() == []


async def test_a_window_that_never_opens_for_the_number_is_422(
    settings_factory, client_for, fake_plivo
):
    """One hour a day, and a toll-free number spread from Newfoundland to Hawaii."""
    settings = settings_factory(api_keys=API_KEYS, quiet_hours="08:00-09:00")
    async with client_for(settings) as client:
        body = {**VALID, "to": "+18005550100", "quiet_hours": True}
        response = await client.post(SEND, json=body, headers=A)
    assert response.status_code == 422
    assert response.json()["code"] == "validation_error"
    assert [e["field"] for e in response.json()["errors"]] == ["quiet_hours"]
    assert "08:00-09:00" in response.json()["errors"][0]["message"]


async def test_a_scheduled_sends_key_is_kept_until_send_at_plus_a_day(client, fake_plivo):
    """An Idempotency-Key older than 24 h still replays while its sendAt + 24 h has not
    passed; retention purges it only then."""
    from sqlalchemy import update

    from app.store.db import FunctionOp
    from app.store.repository import purge
    from app.store.tables import idempotency_keys

    body = {**VALID, "send_at": later(days=10)}
    headers = {**A, "Idempotency-Key": "long-lived"}
    first = await client.post(SEND, json=body, headers=headers)
    db = client.services.db
    two_days_ago = int(time.time() * 1000) - 2 * 86_400_000
    aged = update(idempotency_keys).values(created_at=two_days_ago)
    await db.write(FunctionOp(lambda conn: conn.execute(aged)))
    again = await client.post(SEND, json=body, headers=headers)
    assert again.status_code == 202 and again.headers["idempotent-replayed"] == "true"
    assert again.json() == first.json()
    await db.write(FunctionOp(lambda conn: purge(conn, retention_ms=90 * 86_400_000)))
    kept = await client.post(SEND, json=body, headers=headers)
    assert kept.headers.get("idempotent-replayed") == "true"
    expired = update(idempotency_keys).values(keep_until=int(time.time() * 1000) - 1)
    await db.write(FunctionOp(lambda conn: conn.execute(expired)))
    await db.write(FunctionOp(lambda conn: purge(conn, retention_ms=90 * 86_400_000)))
    async with db.read() as conn:
        from sqlalchemy import func, select

        left = (await conn.execute(select(func.count()).select_from(idempotency_keys))).scalar()
    assert left == 0


async def test_retention_never_purges_a_scheduled_message(client, fake_plivo):
    from sqlalchemy import update

    from app.store.db import FunctionOp
    from app.store.repository import purge
    from app.store.tables import messages

    message_id = (
        await client.post(SEND, json={**VALID, "send_at": later(days=10)}, headers=A)
    ).json()["id"]
    db = client.services.db
    await db.write(FunctionOp(lambda conn: conn.execute(update(messages).values(created_at=0))))
    await db.write(FunctionOp(lambda conn: purge(conn, retention_ms=86_400_000)))
    assert (await status_of(client, message_id))["status"] == "scheduled"
