"""What happens when things go wrong inside the service: races, a failing store, bugs."""

from __future__ import annotations

import asyncio
import sqlite3
import time

import pytest
from sqlalchemy import select, update
from sqlalchemy.exc import OperationalError

from app.plivo.breaker import CLOSED, HALF_OPEN, OPEN, CircuitBreaker
from app.store import db as store_db
from app.store.db import Database, FunctionOp, RecordPending, StoreUnavailable
from app.store.idempotency import KEEP_MS, TakeKey
from app.store.repository import RecordMessage, now_ms
from app.store.tables import idempotency_keys, messages
from tests import fakeplivo as fp
from tests.helpers import VALID, wait_for
from tests.signing import FORM, form, v3_headers


def _row(message_id: str, **changes):
    now = now_ms()
    row = {
        "id": message_id,
        "caller": "a",
        "message_uuid": None,
        "api_id": None,
        "to_number": "+14155550100",
        "from_number": "+14155550000",
        "media_count": 1,
        "text": None,
        "status": "unknown",
        "status_rank": 0,
        "error_code": None,
        "idempotency_key": "k",
        "request_id": "r",
        "created_at": now,
        "updated_at": now,
        "next_check_at": None,
        "checks": 0,
        "claimed_until": None,
    }
    return {**row, **changes}


async def test_an_expired_key_is_retaken_by_one_replica_only(store_url):
    """Two replicas retaking a key older than 24 h at once: one sends, the other waits (409)."""
    one, two = Database(store_url), Database(store_url)
    await one.start()
    await two.start()
    stale = now_ms() - KEEP_MS - 60_000
    await one.write(
        FunctionOp(
            lambda c: c.execute(
                idempotency_keys.insert().values(
                    caller="a",
                    key="k",
                    fingerprint="f",
                    state="done",
                    status_code=200,
                    body="{}",
                    headers="{}",
                    message_id="old",
                    created_at=stale,
                    lease_until=stale,
                )
            )
        )
    )
    claims = await asyncio.gather(
        one.write(TakeKey("a", "k", "f", 60_000, _row("m1"))),
        two.write(TakeKey("a", "k", "f", 60_000, _row("m2"))),
    )
    await one.close()
    await two.close()
    assert sorted(c.kind for c in claims) == ["in_flight", "new"]


async def test_a_finish_never_moves_a_status_backwards(store_url):
    db = Database(store_url)
    await db.start()
    await db.write(RecordMessage(_row("m1")))
    await db.write(
        FunctionOp(
            lambda c: c.execute(
                update(messages)
                .where(messages.c.id == "m1")
                .values(status="delivered", status_rank=3)
            )
        )
    )
    finished = _row("m1", message_uuid="u1", status="queued", status_rank=1)
    await db.write(RecordMessage(finished, existing=True))
    async with db.read() as conn:
        row = (await conn.execute(select(messages).where(messages.c.id == "m1"))).one()
    await db.close()
    assert (row.status, row.message_uuid) == ("delivered", "u1")


async def test_a_write_that_never_commits_fails_in_bounded_time(sqlite_url, monkeypatch):
    """Another process holds the file's write lock: the writer's thread waits for it (the
    busy timeout), its caller does not."""
    monkeypatch.setattr(store_db, "WRITE_TIMEOUT_SECONDS", 0.3)
    db = Database(sqlite_url)
    await db.start()
    assert db.sqlite_path is not None
    holder = sqlite3.connect(db.sqlite_path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # the write lock, held
    started = time.monotonic()
    with pytest.raises(StoreUnavailable, match="did not commit in time"):
        await db.write(RecordMessage(_row("m1")))
    assert time.monotonic() - started < 3
    holder.execute("ROLLBACK")
    holder.close()
    await db.close()


async def test_a_kept_write_that_is_late_is_pending_then_written(sqlite_url, monkeypatch):
    """A send's record that does not commit in time: its caller hears RecordPending (the
    send is answered, the record kept), and the record is written once the store moves."""
    monkeypatch.setattr(store_db, "WRITE_TIMEOUT_SECONDS", 0.3)
    db = Database(sqlite_url)
    await db.start()
    assert db.sqlite_path is not None
    holder = sqlite3.connect(db.sqlite_path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(RecordPending, match="did not commit in time"):
            await db.write(RecordMessage(_row("m1")), keep=True)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    await db.write(FunctionOp(lambda c: c.execute(select(1))))  # commits after m1's batch
    async with db.read() as conn:
        assert (await conn.execute(select(messages.c.id))).scalars().all() == ["m1"]
    await db.close()


async def test_a_write_op_that_awaits_anything_but_its_statements_fails_alone(store_url, capfd):
    """A write op runs inside the writer's transaction, on SQLite in the writer's thread:
    it may await its connection's statements and nothing else. One that does fails alone
    (logged), and the store stays writable."""
    db = Database(store_url)
    await db.start()

    async def waits(conn):
        await asyncio.sleep(0.01)

    try:
        if db.dialect == "sqlite":
            with pytest.raises(StoreUnavailable):
                await db.write(FunctionOp(waits))
            assert "store_op_failed" in capfd.readouterr().out
        else:  # PostgreSQL's writer runs on the event loop: any await works there
            await db.write(FunctionOp(waits))
        await db.write(RecordMessage(_row("m1")))
        assert db.writable
        async with db.read() as conn:
            assert (await conn.execute(select(messages.c.id))).scalars().all() == ["m1"]
    finally:
        await db.close()


async def test_a_failed_write_logs_no_parameters(sqlite_url, capfd):
    """SQL parameters (message text among them) never reach the logs."""
    db = Database(sqlite_url)
    await db.start()
    with pytest.raises(StoreUnavailable):
        await db.write(RecordMessage(_row("m1", caller=None, text="secret-text-4711")))
    await db.close()
    output = capfd.readouterr().out
    assert "store_op_failed" in output  # refused alone: not a store fault
    assert "secret-text-4711" not in output


async def test_an_unexpected_error_is_a_500_with_request_id(client, capfd):
    """A bug answers 500 internal_error with X-Request-ID, logged with the request id."""

    async def broken(*args, **kwargs):
        raise RuntimeError("boom")

    client.services.db.ping = broken
    response = await client.get("/ready", headers={"X-Request-ID": "trace-me-1"})
    assert response.status_code == 500
    assert response.json()["code"] == "internal_error" and "boom" not in response.text
    assert response.headers["x-request-id"] == "trace-me-1"
    logs = capfd.readouterr().out
    assert "unhandled_exception" in logs and "trace-me-1" in logs


async def test_a_database_error_on_a_read_is_503(client):
    class Failing:
        async def __aenter__(self):
            raise OperationalError("SELECT", {}, Exception("down"))

        async def __aexit__(self, *args):
            return False

    client.services.db.read = Failing
    response = await client.get("/api/mms")
    assert response.status_code == 503 and response.json()["code"] == "service_unavailable"


async def test_an_unexpected_send_failure_is_an_unknown_outcome(client, fake_plivo):
    """A bug in the send path after the limits: 502 upstream_error, recorded as unknown."""

    async def broken(**kwargs):
        raise RuntimeError("boom")

    client.services.limits.count_send = broken
    response = await client.post("/api/mms/send", json=VALID, headers={"Idempotency-Key": "bug"})
    assert response.status_code == 502 and response.json()["code"] == "upstream_error"
    listed = (await client.get("/api/mms", params={"idempotencyKey": "bug"})).json()["items"]
    assert [m["status"] for m in listed] == ["unknown"]


async def test_the_reconciler_survives_a_failing_message(
    settings_factory, client_for, fake_plivo, fast_reconciler
):
    settings = settings_factory(reconcile_after_seconds=0, reconcile_rate=50)
    async with client_for(settings) as client:
        reconciler = client.services.reconciler
        calls = []
        both_seen = asyncio.Event()

        async def flaky(row):
            calls.append(row["id"])
            if len(set(calls)) == 2:
                both_seen.set()
            if len(calls) == 1:
                raise RuntimeError("one bad message")
            return None

        reconciler._look_up = flaky
        await client.post("/api/mms/send", json=VALID)
        await client.post("/api/mms/send", json={**VALID, "to": "+14155550101"})
        await asyncio.wait_for(both_seen.wait(), 15)
        assert not reconciler._task.done()
    assert len(set(calls)) == 2


async def test_unknown_stays_unknown_when_the_last_lookup_failed(
    settings_factory, client_for, fake_plivo, fast_reconciler
):
    """Only Plivo saying it has no such message makes an unknown outcome `not_sent`."""
    fake_plivo.script(fp.drop())
    settings = settings_factory(
        reconcile_after_seconds=0, reconcile_rate=50, reconcile_give_up_hours=1 / 3600
    )
    async with client_for(settings) as client:
        fake_plivo.lookups_fail = True
        assert (await client.post("/api/mms/send", json=VALID)).status_code == 502
        # The second check comes 1 s after the first: past RECONCILE_GIVE_UP_HOURS (1 s).
        await asyncio.wait_for(_checked(client.services.db, times=2), 15)
        items = (await client.get("/api/mms")).json()["items"]
    assert items[0]["status"] == "unknown"
    assert len(fake_plivo.lookups()) >= 2


async def _checked(db, times):
    """Until the reconciler has finished `times` checks of the one message."""
    while True:
        async with db.read() as conn:
            checks = (await conn.execute(select(messages.c.checks))).scalar_one()
        if checks >= times:
            return
        await asyncio.sleep(0.05)


async def test_limits_count_only_sends_that_reach_plivo(settings_factory, client_for, fake_plivo):
    """A destination refusal does not use the quota; a send without a slot uses neither."""
    settings = settings_factory(daily_quota_per_key=2, rate_limit_per_destination="1/hour")
    async with client_for(settings) as client:
        assert (await client.post("/api/mms/send", json=VALID)).status_code == 200
        refused = await client.post("/api/mms/send", json=VALID)
        assert refused.json()["code"] == "destination_rate_limited"
        other = await client.post("/api/mms/send", json={**VALID, "to": "+14155550101"})
        assert other.status_code == 200  # the quota still had room for it
        third = await client.post("/api/mms/send", json={**VALID, "to": "+14155550102"})
    assert third.json()["code"] == "quota_exceeded"


async def test_a_send_without_a_slot_counts_against_no_limit(
    settings_factory, client_for, fake_plivo
):
    """No concurrency slot within a second: 503 with Retry-After: 1, before Plivo, and no
    limit counts it."""
    fake_plivo.set_default(fp.ok(delay=2.0))
    settings = settings_factory(plivo_max_concurrency=1, rate_limit_per_destination="2/hour")
    async with client_for(settings) as client:
        first = asyncio.create_task(client.post("/api/mms/send", json=VALID))
        # the first send holds the one slot, at Plivo
        await asyncio.to_thread(wait_for, lambda: fake_plivo.in_flight >= 1)
        starved = await client.post("/api/mms/send", json=VALID)
        assert starved.status_code == 503 and starved.headers["retry-after"] == "1"
        assert starved.json()["code"] == "upstream_unavailable"
        assert (await first).status_code == 200
        assert len(fake_plivo.sends()) == 1  # the starved send never reached Plivo
        fake_plivo.set_default(fp.ok())
        assert (await client.post("/api/mms/send", json=VALID)).status_code == 200


async def test_an_oversized_body_still_counts_against_the_ip_limit(settings_factory, client_for):
    async with client_for(settings_factory(rate_limit="2/minute")) as client:
        big = b'{"text": "' + b"x" * (70 * 1024) + b'"}'
        headers = {"Content-Type": "application/json"}
        first = await client.post("/api/mms/send", content=big, headers=headers)
        second = await client.post("/api/mms/send", content=big, headers=headers)
        third = await client.post("/api/mms/send", json=VALID)
    assert (first.status_code, second.status_code, third.status_code) == (413, 413, 429)
    assert first.headers["x-ratelimit-remaining"] == "1"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("ErrorCode", "123456789"),
        ("Sequence", "99999999999"),
        ("Status", "x" * 17),
        ("MessageUUID", "u" * 65),
    ],
)
async def test_odd_signed_callbacks_are_422_not_503(settings_factory, client_for, field, value):
    settings = settings_factory(public_base_url="https://mms.example.com")
    params = {"MessageUUID": "u-1", "Status": "sent", field: value}
    headers = {**FORM, **v3_headers("https://mms.example.com/api/mms/status", params)}
    async with client_for(settings) as client:
        response = await client.post("/api/mms/status", content=form(params), headers=headers)
    assert response.status_code == 422 and response.json()["code"] == "validation_error"


async def test_sandbox_accepts_no_callbacks(settings_factory, client_for):
    """Without a token nothing can be verified — not even a body 'signed' with an empty key."""
    settings = settings_factory(plivo_auth_id=None, plivo_auth_token=None, plivo_sender_number=None)
    params = {"MessageUUID": "u-1", "Status": "delivered"}
    headers = {**FORM, **v3_headers("http://testserver/api/mms/status", params, token="")}
    async with client_for(settings) as client:
        response = await client.post("/api/mms/status", content=form(params), headers=headers)
    assert response.status_code == 403


def test_only_the_trial_moves_the_breaker_out_of_half_open():
    clock = [0.0]
    breaker = CircuitBreaker(threshold=1, reset_seconds=5, clock=lambda: clock[0])
    breaker.record(sick=True)
    assert breaker.state == OPEN
    clock[0] = 6
    assert breaker.admit() is True and breaker.state == HALF_OPEN
    breaker.record(sick=True)  # a send from before the breaker opened: says nothing now
    assert breaker.state == HALF_OPEN
    with pytest.raises(Exception):  # noqa: B017 - the trial is still in flight
        breaker.admit()
    breaker.record(sick=False, trial=True)
    assert breaker.state == CLOSED
