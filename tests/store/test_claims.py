"""The one claim statement (app/store/claims.py) on both stores.

Rows are claimed once per lease: concurrent claimers on PostgreSQL get disjoint rows,
an expired lease makes a row claimable again, `where` narrows what is due, and a release
hands a row back at once.
"""

from __future__ import annotations

import asyncio
import importlib
import sqlite3
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import insert

from app.status import MessageStatus
from app.store import claims
from app.store.db import Database, FunctionOp
from app.store.tables import messages

NOW = 1_800_000_000_000


@pytest.fixture
async def db(store_url: str) -> AsyncIterator[Database]:
    database = Database(store_url)
    await database.start()
    yield database
    await database.close()


async def add_due(db: Database, count: int, *, due: int = NOW - 1, status: str = "queued") -> None:
    rows = [
        {
            "id": f"m{i:04d}",
            "caller": "k",
            "to_number": "+14155550100",
            "from_number": "+14155550199",
            "media_count": 1,
            "status": status,
            "status_rank": MessageStatus(status).rank,
            "created_at": NOW - 10_000,
            "updated_at": NOW - 10_000,
            "next_check_at": due,
        }
        for i in range(count)
    ]

    async def write(conn: Any) -> None:
        await conn.execute(insert(messages), rows)

    await db.write(FunctionOp(write))


async def claim(db: Database, *, now: int = NOW, batch: int = 10, **kw: Any) -> list[str]:
    async def run(conn: Any) -> list[dict[str, Any]]:
        return await claims.claim_due(
            conn,
            messages,
            due=messages.c.next_check_at,
            now=now,
            batch=batch,
            lease_ms=60_000,
            returning=(messages.c.id,),
            **kw,
        )

    return sorted(row["id"] for row in await db.write(FunctionOp(run)))


async def test_a_claimed_row_is_not_claimed_again_until_its_lease_expires(db):
    await add_due(db, 3)
    assert await claim(db) == ["m0000", "m0001", "m0002"]
    assert await claim(db, now=NOW + 59_999) == []
    assert await claim(db, now=NOW + 60_001) == ["m0000", "m0001", "m0002"]


async def test_only_due_rows_are_claimed_earliest_first_up_to_the_batch(db):
    await add_due(db, 2)
    await add_due_later(db)
    assert await claim(db, batch=1) == ["m0000"]
    assert await claim(db, batch=5) == ["m0001"]  # "later" is not due yet


async def add_due_later(db: Database) -> None:
    async def write(conn: Any) -> None:
        await conn.execute(
            insert(messages).values(
                id="later",
                caller="k",
                to_number="+14155550100",
                from_number="+14155550199",
                media_count=1,
                status="queued",
                status_rank=MessageStatus.QUEUED.rank,
                created_at=NOW,
                updated_at=NOW,
                next_check_at=NOW + 1_000,
            )
        )

    await db.write(FunctionOp(write))


async def test_where_narrows_the_due_rows(db):
    await add_due(db, 2)
    assert await claim(db, where=[messages.c.status == "sent"]) == []
    assert len(await claim(db, where=[messages.c.status == "queued"])) == 2


async def test_release_hands_a_claim_back_at_once(db):
    await add_due(db, 2)
    await claim(db)

    async def release(conn: Any) -> None:
        await claims.release(conn, messages, ["m0001"])

    await db.write(FunctionOp(release))
    assert await claim(db) == ["m0001"]


async def test_count_due_counts_claimed_rows_too_and_reports_the_oldest(db):
    await add_due(db, 3, due=NOW - 500)
    await claim(db, batch=1)

    async def count(conn: Any) -> tuple[int, int | None]:
        return await claims.count_due(conn, messages, due=messages.c.next_check_at, now=NOW)

    async with db.read() as conn:
        assert await count(conn) == (3, NOW - 500)


@pytest.mark.parametrize("store_url", ["postgres"], indirect=True)
async def test_concurrent_claimers_on_postgresql_get_disjoint_rows(store_url):
    """Two replicas' writers claim at the same moment: SKIP LOCKED keeps them apart."""
    first, second = Database(store_url), Database(store_url)
    await first.start()
    await second.start()
    try:
        await add_due(first, 200)
        taken = await asyncio.gather(
            *(claim(db, batch=7) for _ in range(15) for db in (first, second))
        )
        flat = [row for rows in taken for row in rows]
        assert len(flat) == len(set(flat)) == 200
    finally:
        await first.close()
        await second.close()


class _Capture:
    """A connection that keeps the statement it is given instead of running it."""

    def __init__(self) -> None:
        from sqlalchemy.dialects import sqlite

        self.dialect = sqlite.dialect()
        self.statement: Any = None

    async def execute(self, statement: Any, *args: Any, **kwargs: Any) -> list[Any]:
        self.statement = statement
        return []


@pytest.mark.parametrize("worker", ["webhooks", "outbox", "reconcile"])
async def test_each_claim_on_sqlite_reads_only_the_rows_it_takes(worker, sqlite_url):
    """SQLite's planner has no statistics: the webhook claim once took an index for its
    `status` alone, sorted every pending row at each claim, and its update scanned them
    again (27 % of the service's CPU under load). Every worker's claim must find its due
    rows in index order (no sort) and update the chosen rows by key. (`sqlite_url` is a
    migrated store.)"""
    capture = _Capture()
    store = importlib.import_module(f"app.store.{worker}")
    await store.claim_due(capture, now=NOW, batch=10, lease_ms=30_000)  # type: ignore[arg-type]
    sql = str(
        capture.statement.compile(dialect=capture.dialect, compile_kwargs={"literal_binds": True})
    )
    with sqlite3.connect(sqlite_url.split("///", 1)[1]) as conn:
        plan = [row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}")]
    assert not any("TEMP B-TREE" in step for step in plan), plan
    assert not any(step.startswith("SCAN") and "chosen" not in step for step in plan), plan
    update = plan[0]  # the update's own access to its table comes first
    assert "autoindex" in update and "(id=?)" in update, plan
