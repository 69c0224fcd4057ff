"""The store: every accepted send recorded, looked up per key, listed, kept across restarts."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import select, text

from app.store.db import Database
from app.store.migrate import HEAD_REVISION, current_revision
from app.store.tables import messages
from tests import fakeplivo as fp
from tests.helpers import API_KEYS, KEY_A, KEY_B, VALID

A = {"X-API-Key": KEY_A}
B = {"X-API-Key": KEY_B}


@pytest.fixture
def keyed(settings_factory, store_url):
    return settings_factory(api_keys=API_KEYS, database_url=store_url)


async def test_send_is_recorded_and_looked_up(keyed, client_for, fake_plivo):
    async with client_for(keyed) as client:
        sent = (await client.post("/api/mms/send", json=VALID, headers=A)).json()
        message_uuid = sent["messageUuid"][0]
        by_uuid = (await client.get(f"/api/mms/{message_uuid}", headers=A)).json()
        by_id = (await client.get(f"/api/mms/{by_uuid['id']}", headers=A)).json()
    assert by_uuid == by_id
    assert by_uuid["messageUuid"] == message_uuid
    assert (by_uuid["to"], by_uuid["status"], by_uuid["mediaCount"]) == (
        "+14155550100",
        "queued",
        1,
    )
    assert by_uuid["errorCode"] is None and by_uuid["events"] == []
    assert by_uuid["createdAt"].endswith("Z")


async def test_lookups_are_scoped_to_the_callers_key(keyed, client_for, fake_plivo):
    """Another caller's message, an unknown id and a malformed id are all 404 not_found."""
    async with client_for(keyed) as client:
        message_uuid = (await client.post("/api/mms/send", json=VALID, headers=A)).json()[
            "messageUuid"
        ][0]
        responses = [
            await client.get(f"/api/mms/{message_uuid}", headers=B),
            await client.get("/api/mms/0f8e9c2a-0000-4000-8000-000000000000", headers=A),
            await client.get("/api/mms/..%2F..%2Fetc", headers=A),
            await client.get("/api/mms/" + "x" * 300, headers=A),
            await client.get("/api/mms/%00", headers=A),
        ]
        listed_by_b = (await client.get("/api/mms", headers=B)).json()
        unauthenticated = await client.get(f"/api/mms/{message_uuid}")
    for response in responses:
        assert response.status_code == 404, response.text
        assert response.json()["code"] == "not_found"
    assert listed_by_b["items"] == []
    assert unauthenticated.status_code == 401


async def test_listing_is_newest_first_and_paginated(keyed, client_for, fake_plivo):
    async with client_for(keyed) as client:
        sent = []
        for i in range(5):
            body = {**VALID, "to": f"+1415555010{i}"}
            sent.append(
                (await client.post("/api/mms/send", json=body, headers=A)).json()["messageUuid"][0]
            )
            await asyncio.sleep(0.002)
        await client.post("/api/mms/send", json=VALID, headers=B)
        pages, cursor = [], None
        while True:
            query = {"limit": 2} | ({"cursor": cursor} if cursor else {})
            page = (await client.get("/api/mms", params=query, headers=A)).json()
            pages.append([m["messageUuid"] for m in page["items"]])
            cursor = page["nextCursor"]
            if cursor is None:
                break
        by_to = (await client.get("/api/mms", params={"to": "+14155550103"}, headers=A)).json()
        by_status = (await client.get("/api/mms", params={"status": "delivered"}, headers=A)).json()
        since = (
            await client.get("/api/mms", params={"since": "2999-01-01T00:00:00Z"}, headers=A)
        ).json()
        naive = (  # a time without an offset is taken (as UTC: tests/unit/test_query_times.py)
            await client.get("/api/mms", params={"since": "2000-01-01T00:00:00"}, headers=A)
        ).json()
    assert [len(p) for p in pages] == [2, 2, 1]
    assert [u for p in pages for u in p] == list(reversed(sent))
    assert [m["messageUuid"] for m in by_to["items"]] == [sent[3]]
    assert by_status["items"] == [] and since["items"] == []
    assert len(naive["items"]) == 5


@pytest.mark.parametrize(
    "query",
    [
        {"limit": 0},
        {"limit": 101},
        {"limit": "ten"},
        {"status": "lost"},
        {"since": "yesterday"},
        {"since": "1700000000"},  # pydantic alone would read a number as Unix time
        {"since": "1.866519284748981e-307"},  # what schemathesis sent
        {"cursor": "!!!"},
        {"idempotencyKey": ""},
    ],
)
async def test_bad_listing_queries_are_422(keyed, client_for, query):
    async with client_for(keyed) as client:
        response = await client.get("/api/mms", params=query, headers=A)
    assert response.status_code == 422 and response.json()["code"] == "validation_error"


async def test_unknown_outcome_is_recorded_without_uuid(keyed, client_for, fake_plivo):
    """Dropped after sending: 502 to the caller, an `unknown` record without messageUuid."""
    fake_plivo.script(fp.drop())
    async with client_for(keyed) as client:
        assert (await client.post("/api/mms/send", json=VALID, headers=A)).status_code == 502
        fake_plivo.script(fp.status(400, "invalid"))
        assert (await client.post("/api/mms/send", json=VALID, headers=A)).status_code == 400
        fake_plivo.script(
            fp.status(503, retry_after="0"),
            fp.status(503, retry_after="0"),
            fp.status(503, retry_after="0"),
        )
        assert (await client.post("/api/mms/send", json=VALID, headers=A)).status_code == 503
        items = (await client.get("/api/mms", headers=A)).json()["items"]
    assert [(m["status"], m["messageUuid"]) for m in items] == [
        ("rejected", None),
        ("unknown", None),
    ]


async def test_text_is_stored_only_when_asked(settings_factory, client_for, store_url, fake_plivo):
    for store_text in (False, True):
        settings = settings_factory(database_url=store_url, store_message_text=store_text)
        async with client_for(settings) as client:
            await client.post("/api/mms/send", json={**VALID, "text": f"kept={store_text}"})
    db = Database(store_url)
    async with db.read() as conn:
        texts = sorted((await conn.execute(select(messages.c.text))).scalars(), key=str)
    await db.engine.dispose()
    assert texts == ["kept=True", None] or texts == [None, "kept=True"]


async def test_data_survives_a_restart(keyed, client_for, fake_plivo):
    async with client_for(keyed) as client:
        message_uuid = (await client.post("/api/mms/send", json=VALID, headers=A)).json()[
            "messageUuid"
        ][0]
    async with client_for(keyed) as client:
        response = await client.get(f"/api/mms/{message_uuid}", headers=A)
    assert response.status_code == 200 and response.json()["status"] == "queued"


async def test_migrations_from_empty_and_on_restart(empty_store_url):
    """Two processes starting together migrate once; a restart is a no-op at HEAD."""
    store_url = empty_store_url
    first, second = Database(store_url), Database(store_url)
    await asyncio.gather(first.start(), second.start())
    for db in (first, second):
        await db.close()
    again = Database(store_url)
    await again.start()
    async with again.read() as conn:
        assert await current_revision(conn) == HEAD_REVISION
        tables = {"messages", "events", "callback_nonces", "idempotency_keys"}
        for table in tables:
            await conn.execute(text(f"SELECT count(*) FROM {table}"))
    await again.close()


def test_head_revision_constant_matches_the_migrations():
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from app.store.migrate import MIGRATIONS

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    assert ScriptDirectory.from_config(config).get_current_head() == HEAD_REVISION


async def test_group_commit_batches_concurrent_writes(keyed, client_for, fake_plivo):
    """50 concurrent sends are all recorded, in fewer transactions than sends."""
    batches = []
    async with client_for(keyed) as client:
        writer = client.services.db.writer
        writer._on_batch = lambda size, seconds: batches.append(size)
        bodies = [{**VALID, "to": f"+1415555{1000 + i}"} for i in range(50)]
        responses = await asyncio.gather(
            *(client.post("/api/mms/send", json=b, headers=A) for b in bodies)
        )
        listed = (await client.get("/api/mms", params={"limit": 100}, headers=A)).json()["items"]
    assert all(r.status_code == 200 for r in responses)
    assert len(listed) == 50
    assert sum(batches) >= 50 and len(batches) < 25  # (the reconciler writes too)


async def test_ready_is_200_with_degraded_list(keyed, client_for):
    async with client_for(keyed) as client:
        response = await client.get("/ready")
    assert response.status_code == 200 and response.json() == {"status": "ready", "degraded": []}


async def test_ready_is_503_when_the_store_is_unreachable(
    settings_factory, client_for, postgres_url
):
    from tests.helpers import psql

    role = postgres_url.split("//")[1].split("@")[0]
    async with client_for(settings_factory(database_url=postgres_url)) as client:
        assert (await client.get("/ready")).status_code == 200
        psql(
            f"ALTER ROLE {role} NOLOGIN; SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{role}';"
        )
        response = await client.get("/ready")
        health = await client.get("/health")
        psql(f"ALTER ROLE {role} LOGIN;")
    assert response.status_code == 503
    assert response.json()["code"] == "not_ready"
    assert health.status_code == 200  # liveness does no I/O


async def test_ready_names_redis_fallback_as_degraded(settings_factory, client_for, fake_plivo):
    from tests.server import free_port

    settings = settings_factory(rate_limit_storage_url=f"redis://127.0.0.1:{free_port()}/0")
    async with client_for(settings) as client:
        await client.post("/api/mms/send", json=VALID)
        response = await client.get("/ready")
    assert response.status_code == 200
    assert response.json()["degraded"] == ["rate_limit_storage"]


async def test_retention_purges_old_rows(store_url):
    from app.retention import purge_once
    from app.store.repository import IngestEvent, RecordMessage, now_ms

    db = Database(store_url)
    await db.start()
    old = now_ms() - 91 * 86_400_000
    for message_id, created in (("old", old), ("new", now_ms())):
        await db.write(
            RecordMessage(
                {
                    "id": message_id,
                    "caller": "a",
                    "message_uuid": f"u-{message_id}",
                    "api_id": None,
                    "to_number": "+14155550100",
                    "from_number": "+14155550000",
                    "media_count": 1,
                    "text": None,
                    "status": "queued",
                    "status_rank": 1,
                    "error_code": None,
                    "idempotency_key": None,
                    "request_id": None,
                    "created_at": created,
                    "updated_at": created,
                    "next_check_at": None,
                    "checks": 0,
                    "claimed_until": None,
                }
            )
        )
    await db.write(
        IngestEvent("u-old", "sent", None, 1, "callback", nonces=("n-old",), received_at=old)
    )
    async with db.engine.begin() as conn:
        await conn.execute(text("UPDATE callback_nonces SET seen_at = :t"), {"t": old})
    await purge_once(db, retention_days=90)
    async with db.read() as conn:
        ids = set((await conn.execute(select(messages.c.id))).scalars())
        events = (await conn.execute(text("SELECT count(*) FROM events"))).scalar_one()
        nonces = (await conn.execute(text("SELECT count(*) FROM callback_nonces"))).scalar_one()
    await db.close()
    assert ids == {"new"} and events == 0 and nonces == 0


async def test_sigterm_turns_ready_to_503(settings_factory, client_for):
    """The lifespan chains a SIGTERM handler that marks the replica as draining at once."""
    import os
    import signal

    seen = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: seen.append(signum))
    try:
        async with client_for(settings_factory()) as client:
            assert (await client.get("/ready")).status_code == 200
            os.kill(os.getpid(), signal.SIGTERM)
            await asyncio.sleep(0.05)
            response = await client.get("/ready")
            health = await client.get("/health")
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert seen == [signal.SIGTERM]  # uvicorn's own handler still ran
    assert response.status_code == 503 and response.json()["code"] == "not_ready"
    assert health.status_code == 200
