"""The outbox worker: what it re-checks at send time, backoff and give-up, a holder that
died mid-send, cancel against claim, pacing, the shutdown drain, and kill -9 of a real
`python -m app` during the POST (both stores)."""

from __future__ import annotations

import asyncio
import functools
import json
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, update

from app.store import outbox as store
from app.store.db import Database, FunctionOp
from app.store.repository import now_ms
from app.store.tables import messages
from tests import fakeplivo as fp
from tests.helpers import API_KEYS, KEY_A, KEY_B, VALID, wait_for
from tests.loopback import http_get, http_post

A = {"X-API-Key": KEY_A}
ASYNC = {**A, "Prefer": "respond-async"}
SEND = "/api/mms/send"


def later(**delta: float) -> str:
    return (datetime.now(UTC) + timedelta(**delta)).isoformat()


async def row_of(db: Database, message_id: str) -> dict:
    async with db.read() as conn:
        row = (await conn.execute(select(messages).where(messages.c.id == message_id))).first()
    assert row is not None
    return dict(row._mapping)


async def set_row(db: Database, message_id: str, **values) -> None:
    statement = update(messages).where(messages.c.id == message_id).values(**values)
    await db.write(FunctionOp(lambda conn: conn.execute(statement)))


async def eventually(probe, timeout: float = 20.0, every: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        value = await probe()
        if value or time.monotonic() > deadline:
            assert value, "condition not met in time"
            return value
        await asyncio.sleep(every)


async def make_due(client, message_id: str) -> None:
    """A message scheduled for later becomes due now; the outbox is woken."""
    await set_row(client.services.db, message_id, send_at=now_ms())
    client.services.outbox.wake()


async def status_is(client, message_id: str, wanted: str) -> dict | None:
    row = await row_of(client.services.db, message_id)
    return row if row["status"] == wanted else None


@pytest.fixture
def make(settings_factory, store_url):
    return functools.partial(settings_factory, api_keys=API_KEYS, database_url=store_url)


async def schedule(client, headers=A, **body) -> str:
    response = await client.post(
        SEND, json={**VALID, "send_at": later(hours=1), **body}, headers=headers
    )
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


# Re-checks at send time --------------------------------------------------------------------
async def test_opted_out_at_send_time_is_canceled(make, client_for, fake_plivo):
    async with client_for(make()) as client:
        message_id = await schedule(client)
        await client.post("/api/optouts", json={"number": VALID["to"]}, headers=A)
        await make_due(client, message_id)
        row = await eventually(lambda: status_is(client, message_id, "canceled"))
        shown = (await client.get(f"/api/mms/{message_id}", headers=A)).json()
    assert row["cancel_reason"] == "opted_out" and row["send_at"] is None
    assert row["text"] is None  # erased: STORE_MESSAGE_TEXT is off
    assert shown["status"] == "canceled" and shown["cancelReason"] == "opted_out"
    assert fake_plivo.sends() == []


async def test_removed_key_is_canceled_at_send_time(make, client_for, fake_plivo):
    async with client_for(make()) as client:
        message_id = await schedule(client, headers={"X-API-Key": KEY_B})
    async with client_for(make(api_keys=f"alpha:{KEY_A}")) as client:
        await make_due(client, message_id)
        row = await eventually(lambda: status_is(client, message_id, "canceled"))
    assert row["cancel_reason"] == "key_removed"
    assert fake_plivo.sends() == []


async def test_destination_limit_moves_send_at_instead_of_refusing(make, client_for, fake_plivo):
    async with client_for(make(rate_limit_per_destination="1/hour")) as client:
        assert (await client.post(SEND, json=VALID, headers=A)).status_code == 200
        response = await client.post(SEND, json=VALID, headers=ASYNC)
        assert response.status_code == 202
        message_id = response.json()["id"]
        accepted_send_at = response.json()["sendAt"]

        async def moved():
            row = await row_of(client.services.db, message_id)
            return row if row["send_at"] > now_ms() + 30 * 60_000 else None

        row = await eventually(moved)
        shown = (await client.get(f"/api/mms/{message_id}", headers=A)).json()
    assert row["status"] == "scheduled" and row["attempts"] == 0
    assert shown["status"] == "scheduled" and shown["sendAt"] != accepted_send_at
    assert len(fake_plivo.sends()) == 1  # only the synchronous one


# Not sent: backoff, then give-up -----------------------------------------------------------
async def test_not_sent_backs_off_then_gives_up(make, client_for, fake_plivo):
    fake_plivo.set_default(fp.status(503))
    settings = make(outbox_give_up_hours=3 / 3600, circuit_failure_threshold=100)
    async with client_for(settings) as client:
        response = await client.post(SEND, json=VALID, headers=ASYNC)
        message_id = response.json()["id"]

        async def backed_off():
            row = await row_of(client.services.db, message_id)
            return row if row["attempts"] >= 1 and row["status"] == "scheduled" else None

        first = await eventually(backed_off)
        assert first["attempt_started_at"] is None  # the mark is cleared: not sent
        assert first["send_at"] > first["scheduled_for"]
        row = await eventually(lambda: status_is(client, message_id, "not_sent"), timeout=30)
    assert row["send_at"] is None and row["next_check_at"] is None
    assert row["attempts"] >= 1
    tries = len(fake_plivo.sends())
    assert tries >= 2  # the sender's own retries inside each attempt, at least one attempt


# A holder that died mid-send --------------------------------------------------------------
async def test_a_claim_found_with_its_attempt_mark_is_unknown_never_resent(
    make, client_for, fake_plivo
):
    async with client_for(make(reconcile_after_seconds=3600)) as client:
        message_id = await schedule(client)
        started = now_ms() - 5000
        # As a holder that died after its mark: the lease ran out, the mark stayed.
        await set_row(
            client.services.db,
            message_id,
            attempt_started_at=started,
            claimed_until=now_ms() - 1,
        )
        await make_due(client, message_id)
        row = await eventually(lambda: status_is(client, message_id, "unknown"))
        await asyncio.sleep(0.5)
    assert fake_plivo.sends() == []
    assert row["send_at"] is None and row["claimed_until"] is None
    assert row["next_check_at"] == started + 3600_000  # from the attempt's start


# Cancel against claim ---------------------------------------------------------------------
async def test_cancel_and_claim_race_exactly_one_wins(store_url, settings_factory):
    """Two replicas: one claims every due message while the other cancels each of them."""
    first, second = Database(store_url), Database(store_url)
    await first.start()
    await second.start()
    try:
        now = now_ms()
        ids = [uuid.uuid4().hex for _ in range(30)]
        for message_id in ids:
            await first.write(
                store.InsertScheduled(
                    {
                        "id": message_id,
                        "caller": "alpha",
                        "to_number": VALID["to"],
                        "from_number": "+14155550000",
                        "media_count": 1,
                        "status": "scheduled",
                        "status_rank": -1,
                        "created_at": now,
                        "updated_at": now,
                        "send_at": now - 1,
                        "scheduled_for": now - 1,
                        "text": "hello",
                        "media_urls": '["https://example.com/a.png"]',
                    }
                )
            )

        async def claim_all():
            claimed = []
            for _ in range(len(ids)):
                rows = await first.write(
                    FunctionOp(
                        lambda conn: store.claim_due(conn, now=now_ms(), batch=1, lease_ms=60_000)
                    )
                )
                claimed += [r["id"] for r in rows]
                await asyncio.sleep(0)
            return claimed

        async def cancel(message_id):
            return await second.write(
                FunctionOp(
                    lambda conn: store.cancel_by_caller(
                        conn, "alpha", message_id, now=now_ms(), keep_text=False
                    )
                )
            )

        claimed, *canceled = await asyncio.gather(claim_all(), *(cancel(i) for i in ids))
        ends = {message_id: end for message_id, (end, _) in zip(ids, canceled, strict=True)}
        for message_id in ids:
            row = await row_of(first, message_id)
            won_claim = message_id in claimed
            won_cancel = ends[message_id] == "canceled"
            assert won_claim != won_cancel, (message_id, ends[message_id], won_claim)
            assert row["status"] == ("canceled" if won_cancel else "scheduled")
            if won_claim:
                assert ends[message_id] == "not_cancelable"
    finally:
        await first.close()
        await second.close()


# Pacing -----------------------------------------------------------------------------------
async def test_a_backlog_drains_at_the_rate_and_sync_sends_still_pass(
    settings_factory, client_for, fake_plivo
):
    settings = settings_factory(api_keys=API_KEYS, send_rate="10/second")
    async with client_for(settings) as client:
        started = time.monotonic()
        bodies = [{**VALID, "to": f"+1415555{2000 + i}"} for i in range(40)]
        for body in bodies:
            assert (await client.post(SEND, json=body, headers=ASYNC)).status_code == 202
        await asyncio.sleep(1.0)
        sync = await client.post(SEND, json={**VALID, "to": "+14155559999"}, headers=A)
        await eventually(lambda: _count(fake_plivo, 41), timeout=30)
        took = time.monotonic() - started
    assert sync.status_code == 200  # the outbox leaves the queue short for synchronous sends
    # 41 sends at 10/s with a burst of 10: about 3 s, never much faster.
    assert took >= 2.5, took
    times = sorted(c.at for c in fake_plivo.sends())
    for i in range(len(times) - 20):
        assert times[i + 20] - times[i] >= 0.9  # never more than ~2 s of sends in 1 s


async def _count(fake, n: int) -> bool:
    return len(fake.sends()) >= n


async def test_the_outbox_pauses_while_the_shared_pace_is_down(
    settings_factory, client_for, fake_plivo
):
    from tests.server import free_port

    settings = settings_factory(
        api_keys=API_KEYS, rate_limit_storage_url=f"redis://127.0.0.1:{free_port()}/0"
    )
    async with client_for(settings) as client:
        response = await client.post(SEND, json=VALID, headers=ASYNC)
        await asyncio.sleep(2.0)
        row = await row_of(client.services.db, response.json()["id"])
        sync = await client.post(SEND, json={**VALID, "to": "+14155559999"}, headers=A)
    assert row["status"] == "scheduled" and row["attempt_started_at"] is None
    assert sync.status_code == 200  # synchronous sends fall back to per-process pacing
    assert [c.json["dst"] for c in fake_plivo.sends()] == ["+14155559999"]


async def test_the_outbox_uses_the_fleet_pace_on_redis(
    settings_factory, client_for, fake_plivo, redis_url
):
    settings = settings_factory(api_keys=API_KEYS, rate_limit_storage_url=redis_url)
    async with client_for(settings) as client:
        response = await client.post(SEND, json=VALID, headers=ASYNC)
        await eventually(lambda: status_is(client, response.json()["id"], "queued"))


# Shutdown ---------------------------------------------------------------------------------
async def test_shutdown_lets_an_outbox_send_in_flight_finish(make, client_for, fake_plivo):
    fake_plivo.set_default(fp.ok(delay=1.5))
    settings = make(shutdown_grace_seconds=10)
    async with client_for(settings) as client:
        response = await client.post(SEND, json=VALID, headers=ASYNC)
        message_id = response.json()["id"]
        await eventually(lambda: _count(fake_plivo, 1))
    # The lifespan has ended: the send finished and was recorded before the store closed.
    async with client_for(make()) as client:
        row = await row_of(client.services.db, message_id)
    assert row["status"] == "queued" and row["message_uuid"]
    assert len(fake_plivo.sends()) == 1


async def test_stopping_claims_nothing_more(make, client_for, fake_plivo):
    async with client_for(make()) as client:
        client.services.draining = True  # as SIGTERM does
        response = await client.post(SEND, json=VALID, headers=ASYNC)
        await asyncio.sleep(1.5)
        row = await row_of(client.services.db, response.json()["id"])
    assert row["status"] == "scheduled" and fake_plivo.sends() == []


# kill -9 during the POST ------------------------------------------------------------------
@pytest.mark.slow
def test_kill_9_during_the_post_sends_once_and_reconciles(
    server_factory, fake_plivo, store_url, tmp_path
):
    """The process dies after its attempt mark, during the POST: after a restart on the
    same database, the message is an unknown outcome (never sent again), then reconciled
    from Plivo's message list."""
    fake_plivo.set_default(fp.hang())
    env = {
        "api_keys": API_KEYS,
        "plivo_timeout_seconds": 3,
        "pacing_max_wait_seconds": 0,
        "reconcile_after_seconds": 3,
        "reconcile_rate": 20,
    }
    if store_url.startswith("postgresql"):
        env["database_url"] = store_url
    server = server_factory(**env)
    response = http_post(f"{server.url}{SEND}", json=VALID, headers=ASYNC, timeout=30)
    assert response.status_code == 202
    message_id = response.json()["id"]
    wait_for(lambda: len(fake_plivo.sends()) == 1)
    server.proc.kill()  # SIGKILL, mid-POST
    server.proc.wait(10)
    killed_at = datetime.now(UTC)
    fake_plivo.set_default(fp.ok())
    plivo_uuid = str(uuid.uuid4())
    fake_plivo.mdrs[plivo_uuid] = fp.Mdr(
        plivo_uuid, VALID["to"][1:], "14155550000", killed_at, message_state="delivered"
    )
    restarted = server_factory(**env)

    def status() -> str:
        got = http_get(f"{restarted.url}/api/mms/{message_id}", headers=A, timeout=10)
        return str(got.json()["status"])

    # The lease of the dead holder runs out first (tens of seconds), then the reconciler.
    wait_for(lambda: status() == "delivered", timeout=120, every=0.2)
    assert len(fake_plivo.sends()) == 1  # exactly one POST reached Plivo
    # It was an unknown outcome before the reconciler found it: read from the log, as the
    # two steps can fall between two polls of the status.
    events = [
        json.loads(line).get("event") for line in restarted.logs().splitlines() if line[:1] == "{"
    ]
    assert events.index("outbox_attempt_interrupted") < events.index("reconcile_adopted")
    final = http_get(f"{restarted.url}/api/mms/{message_id}", headers=A, timeout=10).json()
    assert final["messageUuid"] == plivo_uuid
    # One log line per outbox message, with its id and what became of it.
    lines = [line for line in restarted.logs().splitlines() if '"outbox_send"' in line]
    assert len(lines) == 1 and message_id in lines[0] and '"outcome":"lost"' in lines[0]


# Observability ----------------------------------------------------------------------------
async def test_metrics_of_outbox_sends(make, client_for, fake_plivo):
    async with client_for(make(log_level="info")) as client:
        response = await client.post(SEND, json=VALID, headers=ASYNC)
        message_id = response.json()["id"]
        await eventually(lambda: status_is(client, message_id, "queued"))
        await client.post(SEND, json={**VALID, "to": "+14155559999"}, headers=A)
        await schedule(client)  # one in the future

        async def counted():  # the backlog is counted at most once a second
            client.services.outbox.wake()
            text = (await client.get("/metrics")).text
            return text if "mms_outbox_future 1.0" in text else None

        text = await eventually(counted, every=0.2)
    assert 'mms_sends_by_origin_total{origin="outbox",status="queued"} 1.0' in text
    assert 'mms_sends_by_origin_total{origin="sync",status="queued"} 1.0' in text
    assert 'mms_outbox_outcomes_total{outcome="queued"} 1.0' in text
    assert "mms_outbox_future 1.0" in text and "mms_outbox_due 0.0" in text
    assert "mms_outbox_oldest_due_age_seconds 0.0" in text
    assert 'mms_sends_total{code="scheduled"} 2.0' in text


async def test_two_replicas_on_one_redis_drain_at_the_fleet_rate(
    settings_factory, client_for, fake_plivo, redis_url, store_url
):
    """Two apps on one store and one Redis: a backlog due at once goes out at SEND_RATE
    for the pair, each message once, both taking part."""
    settings = settings_factory(
        api_keys=API_KEYS,
        database_url=store_url,
        rate_limit_storage_url=redis_url,
        send_rate="50/second",
        rate_limit="100000/minute",
    )
    async with client_for(settings) as one, client_for(settings) as two:
        send_at = later(seconds=4)
        for i in range(150):
            body = {**VALID, "to": f"+1415555{3000 + i}", "text": f"m{i}", "send_at": send_at}
            response = await (one if i % 2 else two).post(SEND, json=body, headers=A)
            assert response.status_code == 202
        await eventually(lambda: _count(fake_plivo, 150), timeout=60)
        await asyncio.sleep(0.5)
    texts = [c.json["text"] for c in fake_plivo.sends()]
    assert sorted(texts) == sorted(f"m{i}" for i in range(150))  # each once
    times = sorted(c.at for c in fake_plivo.sends())
    took = times[-1] - times[0]
    # 150 at 50/s with a burst of 50: 2 s (less a late start of the first POSTs on a busy
    # loop); two replicas pacing alone would take 0.5 s.
    assert 1.5 <= took <= 4.5, took


async def test_nothing_is_sent_while_the_store_cannot_be_written(
    make, client_for, fake_plivo, monkeypatch
):
    """A failing store (or a send's record pending in memory) makes `writable` false: the
    outbox claims nothing until it is writable again."""
    from app.store.db import Database as Db

    async with client_for(make()) as client:
        message_id = await schedule(client)
        await set_row(client.services.db, message_id, send_at=now_ms())
        writable = Db.writable
        monkeypatch.setattr(Db, "writable", property(lambda self: False))
        client.services.outbox.wake()
        await asyncio.sleep(1.5)
        assert fake_plivo.sends() == []
        assert (await row_of(client.services.db, message_id))["status"] == "scheduled"
        monkeypatch.setattr(Db, "writable", writable)
        client.services.outbox.wake()
        await eventually(lambda: status_is(client, message_id, "queued"))
    assert len(fake_plivo.sends()) == 1


def test_sigterm_lets_the_outbox_send_in_flight_finish(server_factory, fake_plivo):
    """A real `python -m app`: SIGTERM while an outbox POST is in flight; the send
    finishes and is recorded, the process exits 0, and nothing more is claimed."""
    fake_plivo.set_default(fp.ok(delay=2.0))
    env = {"api_keys": API_KEYS, "shutdown_grace_seconds": 10}
    server = server_factory(**env)
    first = http_post(f"{server.url}{SEND}", json=VALID, headers=ASYNC, timeout=30)
    later_one = http_post(
        f"{server.url}{SEND}",
        json={**VALID, "to": "+14155559999", "send_at": later(seconds=1)},
        headers=A,
        timeout=30,
    )
    wait_for(lambda: len(fake_plivo.sends()) == 1)
    assert server.terminate(timeout=30) == 0
    # Due while the first was in flight (its POST takes 2 s), not claimed while draining.
    assert len(fake_plivo.sends()) == 1
    fake_plivo.set_default(fp.ok())
    restarted = server_factory(**env)

    def status(message_id: str) -> str:
        got = http_get(f"{restarted.url}/api/mms/{message_id}", headers=A, timeout=10)
        return str(got.json()["status"])

    assert status(first.json()["id"]) == "queued"
    wait_for(lambda: status(later_one.json()["id"]) == "queued")
    assert len(fake_plivo.sends()) == 2
