"""The Idempotency-Key's states, op by op on a real (migrated, copied) SQLite store, with a
clock the test moves: new -> in flight -> replay; mismatch; release; a crash's lease; 24 h."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from app.status import MessageStatus
from app.store import idempotency
from app.store.db import Database
from app.store.idempotency import KEEP_MS, ReleaseKey, TakeKey, fingerprint
from app.store.repository import RecordMessage, idempotency_completion

LEASE_MS = 10_000


class Clock:
    now = 1_800_000_000_000

    def __call__(self) -> int:
        return self.now


@pytest.fixture
def clock(monkeypatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(idempotency, "now_ms", clock)
    return clock


@pytest.fixture
async def db(sqlite_url) -> AsyncIterator[Database]:
    database = Database(sqlite_url)
    await database.start()
    yield database
    await database.close()


def row(message_id: str, now: int) -> dict[str, Any]:
    return {
        "id": message_id,
        "caller": "alpha",
        "message_uuid": None,
        "api_id": None,
        "to_number": "+14155550100",
        "from_number": "+14155550000",
        "media_count": 1,
        "text": None,
        "status": MessageStatus.UNKNOWN,
        "status_rank": MessageStatus.UNKNOWN.rank,
        "error_code": None,
        "idempotency_key": "k",
        "request_id": "rid",
        "created_at": now,
        "updated_at": now,
        "next_check_at": None,
        "checks": 0,
        "claimed_until": None,
    }


def take(clock: Clock, message_id: str, body: dict[str, Any] | None = None) -> TakeKey:
    return TakeKey(
        caller="alpha",
        key="k",
        fingerprint=fingerprint(body or {"to": "+14155550100", "text": "hi"}),
        lease_ms=LEASE_MS,
        message_row=row(message_id, clock.now),
    )


async def test_one_taker_then_in_flight_then_a_different_body_is_a_mismatch(db, clock):
    assert (await db.write(take(clock, "m1"))).kind == "new"
    assert (await db.write(take(clock, "m2"))).kind == "in_flight"
    assert (await db.write(take(clock, "m3", {"to": "+1", "text": "other"}))).kind == "mismatch"


def test_the_fingerprint_ignores_key_order():
    assert fingerprint({"a": 1, "b": [1, 2]}) == fingerprint({"b": [1, 2], "a": 1})
    assert fingerprint({"a": 1}) != fingerprint({"a": 2})


async def test_a_released_key_may_be_taken_again(db, clock):
    await db.write(take(clock, "m1"))
    await db.write(ReleaseKey("alpha", "k", "m1"))
    assert (await db.write(take(clock, "m2"))).kind == "new"


async def test_a_stored_response_is_replayed(db, clock):
    await db.write(take(clock, "m1"))
    body = orjson.dumps({"message": "message(s) queued"}).decode()
    completion = idempotency_completion("alpha", "k", 200, body, '{"x":"y"}', "m1")
    queued = {**row("m1", clock.now), "status": MessageStatus.QUEUED, "message_uuid": "u-1"}
    queued["status_rank"] = MessageStatus.QUEUED.rank
    await db.write(RecordMessage(queued, idempotency=completion, existing=True))
    claim = await db.write(take(clock, "m2"))
    assert (claim.kind, claim.status, claim.body, claim.headers) == (
        "replay",
        200,
        body.encode(),
        {"x": "y"},
    )


async def test_a_key_orphaned_by_a_crash_becomes_an_unknown_outcome_after_its_lease(db, clock):
    await db.write(take(clock, "m1"))
    clock.now += LEASE_MS - 1
    assert (await db.write(take(clock, "m2"))).kind == "in_flight"
    clock.now += 2
    claim = await db.write(take(clock, "m2"))
    assert claim.kind == "replay" and claim.status == 504
    assert orjson.loads(claim.body)["code"] == "upstream_timeout"
    assert (await db.write(take(clock, "m3"))).status == 504  # stored: the same every time


async def test_a_key_is_free_again_after_24_hours(db, clock):
    await db.write(take(clock, "m1"))
    clock.now += KEEP_MS + 1
    assert (await db.write(take(clock, "m2", {"to": "+1", "text": "new"}))).kind == "new"
