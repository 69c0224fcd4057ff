"""Webhooks: every event type reaches a real receiver on loopback, signed (checked with the
`standardwebhooks` library), scoped to the caller's key, durable and retried."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from app.store.db import FunctionOp
from app.store.tables import webhook_deliveries
from tests import fakeplivo as fp
from tests.helpers import API_KEYS, KEY_A, KEY_B, VALID
from tests.signing import FORM, form, v3_headers
from tests.webhook_receiver import SECRET, Receiver

A = {"X-API-Key": KEY_A}
B = {"X-API-Key": KEY_B}
PUBLIC = "https://mms.example.com"
STATUS_URL = f"{PUBLIC}/api/mms/status"
INBOUND_URL = f"{PUBLIC}/api/mms/inbound"


@pytest.fixture
def receiver():
    r = Receiver().start()
    yield r
    r.stop()


def hooks(receiver: Receiver, **paths: str) -> str:
    """WEBHOOKS for endpoint names -> paths on the receiver (`all` is `*`)."""
    return ",".join(
        f"{'*' if name == 'all' else name}={receiver.url(path)}" for name, path in paths.items()
    )


@pytest.fixture
def hooked(settings_factory, receiver):
    def make(**overrides):
        values = {
            "webhooks": hooks(receiver, alpha="/alpha", bravo="/bravo", all="/all"),
            "webhook_secret": SECRET,
            "public_base_url": PUBLIC,
            "api_keys": API_KEYS,
        }
        return settings_factory(**{**values, **overrides})

    return make


async def until(condition, timeout: float = 20.0) -> None:
    """Wait (without blocking the app's loop) until `condition()` holds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


async def deliveries(client, *where):
    async with client.services.db.read() as conn:
        query = select(webhook_deliveries).where(*where).order_by(webhook_deliveries.c.created_at)
        return [dict(r._mapping) for r in await conn.execute(query)]


def statuses(receiver: Receiver, path: str) -> list[str]:
    return [r.payload["data"]["status"] for r in receiver.of_type("message.status", path)]


async def callback(client, message_uuid, status, sequence, **extra):
    params = {
        "MessageUUID": message_uuid,
        "Status": status,
        "To": "14155550100",
        "From": "14155550000",
        "Sequence": str(sequence),
        **extra,
    }
    headers = {**FORM, **v3_headers(STATUS_URL, params)}
    response = await client.post("/api/mms/status", content=form(params), headers=headers)
    assert response.status_code == 200


async def inbound(client, text, sender="14155550100"):
    params = {
        "From": sender,
        "To": "14155550000",
        "Type": "mms",
        "Text": text,
        "MessageUUID": str(uuid.uuid4()),
        "Media0": "https://media.example.com/cat.png",
    }
    headers = {**FORM, **v3_headers(INBOUND_URL, params)}
    response = await client.post("/api/mms/inbound", content=form(params), headers=headers)
    assert response.status_code == 200
    return params["MessageUUID"]


# Every event type, signed, scoped ------------------------------------------------------------
async def test_status_events_reach_the_key_and_star_endpoints_signed(
    hooked, client_for, receiver, fake_plivo, store_url
):
    async with client_for(hooked(database_url=store_url)) as client:
        response = await client.post("/api/mms/send", json=VALID, headers=A)
        message_uuid = response.json()["messageUuid"][0]
        await callback(client, message_uuid, "sent", 1)
        await callback(client, message_uuid, "delivered", 2)
        await until(lambda: len(receiver.got("/alpha")) == 3 and len(receiver.got("/all")) == 3)
        lookup = (await client.get(f"/api/mms/{message_uuid}", headers=A)).json()
    assert sorted(statuses(receiver, "/alpha")) == ["delivered", "queued", "sent"]
    assert sorted(statuses(receiver, "/all")) == ["delivered", "queued", "sent"]
    assert receiver.got("/bravo") == []  # another key's endpoint hears nothing
    for receipt in receiver.got():
        assert receipt.error is None, receipt.error  # the library verified it
        assert receipt.verified == receipt.payload
        assert set(receipt.payload) == {"type", "timestamp", "data"}
        assert receipt.headers["content-type"] == "application/json"
    final = next(r for r in receiver.got("/alpha") if r.payload["data"]["status"] == "delivered")
    lookup.pop("events")
    assert final.payload["data"] == lookup  # the lookup's message without its history
    ids = {r.id for r in receiver.got()}
    assert len(ids) == 6  # one webhook-id per event per endpoint


async def test_send_outcomes_rejected_and_unknown_are_events(
    hooked, client_for, receiver, fake_plivo
):
    async with client_for(hooked()) as client:
        fake_plivo.script(fp.status(400, "invalid"))
        assert (await client.post("/api/mms/send", json=VALID, headers=A)).status_code == 400
        fake_plivo.script(fp.accept_then_drop())
        response = await client.post(
            "/api/mms/send", json=VALID, headers={**A, "Idempotency-Key": "k-unknown"}
        )
        assert response.status_code == 502
        await until(lambda: len(receiver.got("/alpha")) == 2)
    assert sorted(statuses(receiver, "/alpha")) == ["rejected", "unknown"]
    unknown = next(r for r in receiver.got("/alpha") if r.payload["data"]["status"] == "unknown")
    assert unknown.payload["data"]["idempotencyKey"] == "k-unknown"
    assert unknown.payload["data"]["messageUuid"] is None


async def test_keyed_send_has_one_event_not_one_for_the_key_row(
    hooked, client_for, receiver, fake_plivo, store_url
):
    """The row written when the Idempotency-Key is taken (`unknown` while in flight) is no
    event; the send's outcome is, once; a replay adds none."""
    async with client_for(hooked(database_url=store_url)) as client:
        headers = {**A, "Idempotency-Key": "k-1"}
        first = await client.post("/api/mms/send", json=VALID, headers=headers)
        again = await client.post("/api/mms/send", json=VALID, headers=headers)
        assert first.status_code == again.status_code == 200
        await until(lambda: len(receiver.got("/alpha")) >= 1)
        await asyncio.sleep(0.5)
        rows = await deliveries(client, webhook_deliveries.c.endpoint == "alpha")
    assert statuses(receiver, "/alpha") == ["queued"]
    assert len(rows) == 1


async def test_sandbox_events_flow_queued_sent_delivered(hooked, client_for, receiver):
    settings = hooked(plivo_auth_id=None, plivo_auth_token=None, plivo_sender_number=None)
    async with client_for(settings) as client:
        assert (await client.post("/api/mms/send", json=VALID, headers=A)).status_code == 200
        await until(lambda: len(receiver.got("/alpha")) == 3)
    assert sorted(statuses(receiver, "/alpha")) == ["delivered", "queued", "sent"]
    assert all(r.error is None for r in receiver.got())


async def test_inbound_and_optout_events_go_to_star_only(hooked, client_for, receiver, fake_plivo):
    async with client_for(hooked()) as client:
        message_uuid = await inbound(client, "STOP")
        await until(lambda: len(receiver.got("/all")) == 2)
        added = await client.post("/api/optouts", json={"number": "+14155550111"}, headers=B)
        assert added.status_code == 200
        await until(lambda: len(receiver.got("/all")) == 3)
        rows = await deliveries(client, webhook_deliveries.c.type == "message.inbound")
    assert receiver.got("/alpha") == [] and receiver.got("/bravo") == []
    [message] = receiver.of_type("message.inbound", "/all")
    data = message.payload["data"]
    assert data["messageUuid"] == message_uuid and data["from"] == "+14155550100"
    assert data["text"] == "STOP"  # the text travels even without STORE_MESSAGE_TEXT
    assert data["media"] == ["https://media.example.com/cat.png"]
    assert rows[0]["text"] is None  # ...and is erased once delivered
    changes = [r.payload["data"] for r in receiver.of_type("optout.changed", "/all")]
    assert {"number": "+14155550100", "optedOut": True, "source": "inbound"}.items() <= changes[
        0
    ].items()
    assert changes[1]["number"] == "+14155550111" and changes[1]["source"] == "api:bravo"
    assert all(r.error is None for r in receiver.got())


async def test_error_200_callback_lists_the_number_with_an_event(
    hooked, client_for, receiver, fake_plivo, store_url
):
    async with client_for(hooked(database_url=store_url)) as client:
        message_uuid = (await client.post("/api/mms/send", json=VALID, headers=A)).json()[
            "messageUuid"
        ][0]
        await callback(client, message_uuid, "failed", 1, ErrorCode="200")
        await until(lambda: len(receiver.of_type("optout.changed", "/all")) == 1)
        await until(lambda: len(receiver.got("/alpha")) == 2)
    assert sorted(statuses(receiver, "/alpha")) == ["failed", "queued"]
    failed = next(r for r in receiver.got("/alpha") if r.payload["data"]["status"] == "failed")
    assert failed.payload["data"]["errorCode"] == "200"


async def test_no_endpoint_no_rows(settings_factory, client_for, fake_plivo):
    async with client_for(settings_factory()) as client:
        assert (await client.post("/api/mms/send", json=VALID, headers=A)).status_code == 200
        assert client.services.webhooks is None
        assert await deliveries(client) == []


async def test_rolled_back_change_has_no_event(hooked, client_for, receiver):
    """The event is inserted by the change's own transaction: when it rolls back, so does
    the event."""
    from app.store import optouts

    async with client_for(hooked()) as client:
        db = client.services.db

        async def change_then_fail(conn):
            changed = await optouts.change(
                conn,
                number="+14155550122",
                action="optout",
                source="api:alpha",
                at=int(time.time() * 1000),
                targets=db.webhooks,
            )
            assert changed  # the event row was inserted in this transaction...
            assert await conn.scalar(select(func.count()).select_from(webhook_deliveries)) == 1
            raise RuntimeError("the change fails after its event was inserted")

        with pytest.raises(Exception):  # noqa: B017 - the writer reports it as StoreUnavailable
            await db.write(FunctionOp(change_then_fail))
        assert await deliveries(client) == []  # ...and went with the rollback
        assert (await client.get("/api/optouts/+14155550122", headers=A)).status_code == 404
        await asyncio.sleep(1.0)
    assert receiver.got() == []


# Retries ---------------------------------------------------------------------------------------
class Clock:
    """The worker's clock, moved on by the test (the retry schedule without waiting)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


async def test_retry_keeps_the_webhook_id(hooked, client_for, receiver, fake_plivo):
    receiver.status = 500
    async with client_for(hooked(webhooks=hooks(receiver, alpha="/alpha"))) as client:
        worker = client.services.webhooks
        worker.clock = clock = Clock()
        await client.post("/api/mms/send", json=VALID, headers=A)
        await until(lambda: len(receiver.got()) == 1)
        receiver.status = 204
        clock.offset += 6  # the first retry is due 5 s (+- 10 %) later
        worker.wake()
        await until(lambda: len(receiver.got()) == 2)
        await until(lambda: worker.in_flight == 0)
        [row] = await deliveries(client)
    first, second = receiver.got()
    assert first.id == second.id == row["id"]
    assert first.body == second.body  # the event's own timestamp: the same body
    assert int(second.headers["webhook-timestamp"]) >= int(first.headers["webhook-timestamp"]) + 5
    assert first.error is None and second.error is None
    assert row["status"] == "delivered" and row["attempts"] == 2


async def test_schedule_then_failed_then_retry_endpoint(hooked, client_for, receiver, fake_plivo):
    """Seven attempts 5 s, 5 min, 30 min, 2 h, 5 h, 10 h apart (+-10 %), then `failed`;
    the caller re-queues it and the next attempt delivers it."""
    receiver.status = 503
    async with client_for(hooked(webhooks=hooks(receiver, alpha="/alpha"))) as client:
        worker = client.services.webhooks
        worker.clock = clock = Clock()
        await client.post("/api/mms/send", json=VALID, headers=A)
        gaps = []
        for attempt in range(1, 8):
            await until(lambda n=attempt: len(receiver.got()) == n)
            await until(lambda: worker.in_flight == 0)
            [row] = await deliveries(client)
            assert row["attempts"] == attempt
            if row["next_attempt_at"] is None:
                break
            # Scheduled from the failed attempt's time (the row's updated_at).
            gaps.append((row["next_attempt_at"] - row["updated_at"]) / 1000)
            clock.offset += (row["next_attempt_at"] - worker.now_ms()) / 1000 + 0.01
            worker.wake()
        assert row["status"] == "failed" and row["attempts"] == 7
        assert row["last_error"] == "HTTP 503"
        listed = (await client.get("/api/webhooks/deliveries", headers=A)).json()["items"]
        assert listed[0]["status"] == "failed" and listed[0]["lastError"] == "HTTP 503"
        # Re-queued by its caller: 202, then delivered.
        receiver.status = 200
        other = await client.post(f"/api/webhooks/deliveries/{row['id']}/retry", headers=B)
        retried = await client.post(f"/api/webhooks/deliveries/{row['id']}/retry", headers=A)
        assert retried.status_code == 202
        await until(lambda: len(receiver.got()) == 8)
        await until(lambda: worker.in_flight == 0)
        again = await client.post(f"/api/webhooks/deliveries/{row['id']}/retry", headers=A)
        [row] = await deliveries(client)
    expected = [5, 300, 1800, 7200, 18000, 36000]
    assert len(gaps) == 6
    for gap, delay in zip(gaps, expected, strict=True):
        assert delay * 0.9 <= gap <= delay * 1.1, (gap, delay)
    assert row["status"] == "delivered"
    assert len({r.id for r in receiver.got()}) == 1
    assert other.status_code == 404 and other.json()["code"] == "not_found"
    assert again.status_code == 409 and again.json()["code"] == "delivery_not_failed"


# A slow endpoint slows nothing else -------------------------------------------------------------
async def test_hanging_endpoint_delays_no_send_and_no_other_endpoint(
    hooked, client_for, receiver, fake_plivo
):
    other = Receiver().start()
    receiver.hanging = True
    try:
        endpoints = f"alpha={receiver.url('/alpha')},*={other.url('/all')}"
        async with client_for(hooked(webhooks=endpoints)) as client:
            worker = client.services.webhooks
            timings = []
            total = worker.per_endpoint + 6  # more events than the hanging endpoint's cap
            for i in range(total):
                body = {**VALID, "to": f"+1415555{1000 + i}"}
                started = time.perf_counter()
                response = await client.post("/api/mms/send", json=body, headers=A)
                timings.append(time.perf_counter() - started)
                assert response.status_code == 200
            await until(lambda: len(other.got()) == total, timeout=10)
            # The other endpoint's attempts have their answers; until their outcomes are
            # written they are still in flight. Then what is in flight is the hanging
            # endpoint's: no more than its receiver has seen.
            await until(lambda: worker.in_flight <= len(receiver.got()), timeout=5)
            hung = len(receiver.got())
            in_flight = worker.in_flight
            receiver.unhang()
    finally:
        other.stop()
    # The hanging endpoint holds at most its cap of attempts; the sends never waited on it
    # (an attempt may last 10 s) and the other endpoint got every event meanwhile.
    assert hung <= worker.per_endpoint and in_flight <= worker.per_endpoint
    assert max(timings) < 2.0, timings


async def test_per_endpoint_cap_holds_the_rest_pending(hooked, client_for, receiver, fake_plivo):
    receiver.hanging = True
    async with client_for(hooked(webhooks=hooks(receiver, alpha="/alpha"))) as client:
        worker = client.services.webhooks
        total = worker.per_endpoint + 4
        for i in range(total):
            await client.post(
                "/api/mms/send", json={**VALID, "to": f"+1415555{2000 + i}"}, headers=A
            )
        await until(lambda: len(receiver.got()) == worker.per_endpoint)
        await asyncio.sleep(0.5)
        held = len(receiver.got())
        receiver.unhang()
        await until(lambda: len(receiver.got()) == total)
    assert held == worker.per_endpoint


async def test_each_status_of_one_batch_is_an_event(
    hooked, client_for, receiver, fake_plivo, store_url
):
    """`sent` and `delivered` applied in one transaction are two events (in Plivo's
    Sequence order); a report that changes nothing (a late `sent`) is none."""
    from app.store.repository import IngestEvent

    async with client_for(hooked(database_url=store_url)) as client:
        db = client.services.db
        response = await client.post("/api/mms/send", json=VALID, headers=A)
        message_uuid = response.json()["messageUuid"][0]

        def report(status, sequence):
            return IngestEvent(
                message_uuid=message_uuid,
                status=status,
                error_code=None,
                sequence=sequence,
                source="callback",
                targets=db.webhooks,
            )

        batch = [report("delivered", 3), report("sent", 2)]
        await db.write(FunctionOp(lambda c: IngestEvent.run_many(c, batch)))
        late = [report("sent", 4)]
        await db.write(FunctionOp(lambda c: IngestEvent.run_many(c, late)))
        await until(lambda: len(receiver.got("/alpha")) == 3)
        await asyncio.sleep(0.5)
        rows = await deliveries(client, webhook_deliveries.c.endpoint == "alpha")
    assert len(rows) == 3
    assert sorted(statuses(receiver, "/alpha")) == ["delivered", "queued", "sent"]
    sent, delivered = (
        next(r.payload["data"] for r in receiver.got("/alpha") if r.payload["data"]["status"] == s)
        for s in ("sent", "delivered")
    )
    assert sent["updatedAt"] <= delivered["updatedAt"]


async def test_reconciliation_not_sent_is_an_event(
    hooked, client_for, receiver, fake_plivo, store_url
):
    """The reconciler's own status write is an event too: a dropped send (`unknown`) that
    Plivo never had becomes `not_sent` at the give-up time."""
    fake_plivo.script(fp.drop())
    settings = hooked(
        database_url=store_url,
        reconcile_after_seconds=0,
        reconcile_rate=50,
        reconcile_give_up_hours=1 / 3600,
        webhooks=hooks(receiver, alpha="/alpha"),
    )
    async with client_for(settings) as client:
        assert (await client.post("/api/mms/send", json=VALID, headers=A)).status_code == 502
        await until(lambda: "not_sent" in statuses(receiver, "/alpha"), timeout=30)
    assert sorted(statuses(receiver, "/alpha")) == ["not_sent", "unknown"]
    not_sent = next(r for r in receiver.got() if r.payload["data"]["status"] == "not_sent")
    assert not_sent.payload["data"]["messageUuid"] is None
    assert not_sent.error is None


# The outbox's status changes: an outbox send's `queued`, a caller's cancellation, never
# `scheduled` (the 202 said so) ------------------------------------------------------------
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
