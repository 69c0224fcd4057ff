"""The opt-out list's SQL: the current state per number and the history of every change.

A change is one conditional statement, so two replicas applying the same STOP at once
change the list (and write history) once: an opt-out is an upsert that updates only a row
that is not already opted out; an opt-in updates only a row that is. A call that finds
nothing to change returns False and writes nothing (no new `since`, no history row).
"""

from __future__ import annotations

import sqlite3
import weakref
from typing import Any, Literal

from sqlalchemy import and_, insert, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from app.store import cursors, webhooks
from app.store.db import Database, StoreUnavailable
from app.store.tables import optout_history, optouts

Action = Literal["optout", "optin"]


async def is_opted_out(conn: AsyncConnection, number: str) -> bool:
    """One primary-key lookup."""
    query = select(optouts.c.opted_out).where(optouts.c.number == number)
    return bool((await conn.execute(query)).scalar())


# The send path's check runs on every send. Through SQLAlchemy and aiosqlite a lookup
# costs a pooled connection and several hops to the driver's thread -- as much CPU as a
# large share of the send itself. On SQLite the same indexed lookup on a plain sqlite3
# connection of our own takes microseconds in the event loop. It reads the shared file in
# autocommit mode, so every lookup is a fresh read transaction that sees the last commit
# of any process (WAL): a STOP taken by one worker refuses the next send in every worker.
# On PostgreSQL it is one plain query on a raw asyncpg connection (Database.fetch_value),
# in autocommit too: SQLAlchemy's pooled read adds a ping, a BEGIN and a ROLLBACK.
_LOOKUP = "SELECT opted_out FROM optouts WHERE number = ?"
_readers: weakref.WeakKeyDictionary[Database, sqlite3.Connection] = weakref.WeakKeyDictionary()
_PG_LOOKUP = "SELECT opted_out FROM optouts WHERE number = $1"
READ_BUSY_MS = 200  # readers wait on a writer only in rare WAL recoveries


def sqlite_reader(db: Database) -> sqlite3.Connection | None:
    """The plain read-only sqlite3 connection of the hot lookups (None on PostgreSQL)."""
    if db.sqlite_path is None:
        return None
    reader = _readers.get(db)
    if reader is None:
        reader = sqlite3.connect(
            f"file:{db.sqlite_path}?mode=ro",
            uri=True,
            isolation_level=None,
            check_same_thread=False,
        )
        reader.execute(f"PRAGMA busy_timeout={READ_BUSY_MS}")
        _readers[db] = reader
    return reader


async def is_listed(db: Database, number: str) -> bool:
    """Is `number` on the opt-out list now? One primary-key lookup in the shared store."""
    reader = sqlite_reader(db)
    if reader is None:
        if db.dialect == "postgresql":  # the same lookup without SQLAlchemy's pooled read
            return bool(await db.fetch_value(_PG_LOOKUP, number))
        async with db.read() as conn:
            return await is_opted_out(conn, number)
    try:
        rows = reader.execute(_LOOKUP, (number,)).fetchall()  # fetchall: statement ended
    except sqlite3.Error as exc:
        raise StoreUnavailable(type(exc).__name__) from exc
    return bool(rows and rows[0][0])


async def change(
    conn: AsyncConnection,
    *,
    number: str,
    action: Action,
    source: str,
    at: int,
    reference: str | None = None,
    targets: webhooks.Targets = webhooks.NO_TARGETS,
) -> bool:
    """Put `number` on the list (optout) or take it off (optin); True when it changed
    (then an `optout.changed` webhook event goes to the `*` endpoint, if any)."""
    values = {"opted_out": action == "optout", "since": at, "source": source[:80]}
    if action == "optout":
        module = postgresql if conn.dialect.name == "postgresql" else sqlite
        statement = (
            module.insert(optouts)
            .values(number=number, **values)
            .on_conflict_do_update(
                index_elements=[optouts.c.number],
                set_=values,
                where=optouts.c.opted_out.is_(False),
            )
            .returning(optouts.c.number)
        )
    else:
        statement = (
            update(optouts)
            .where(optouts.c.number == number, optouts.c.opted_out.is_(True))
            .values(**values)
            .returning(optouts.c.number)
        )
    if (await conn.execute(statement)).first() is None:
        return False
    await conn.execute(
        insert(optout_history).values(
            number=number,
            action=action,
            source=source[:80],
            at=at,
            reference=reference[:255] if reference else None,
        )
    )
    if targets.everything:
        data = {
            "number": number,
            "optedOut": action == "optout",
            "source": source[:80],
            "at": webhooks.iso(at),
        }
        await webhooks.add_events(
            conn, targets, [webhooks.Event(type=webhooks.OPTOUT_CHANGED, at=at, data=data)]
        )
    return True


async def get_entry(conn: AsyncConnection, number: str) -> dict[str, Any] | None:
    """The number's state and its history (oldest first); None if it was never listed."""
    row = (await conn.execute(select(optouts).where(optouts.c.number == number))).first()
    if row is None:
        return None
    entry = dict(row._mapping)
    history = await conn.execute(
        select(optout_history.c.action, optout_history.c.source, optout_history.c.at)
        .where(optout_history.c.number == number)
        .order_by(optout_history.c.at, optout_history.c.id)
    )
    entry["history"] = [dict(h._mapping) for h in history]
    return entry


def encode_cursor(since: int, number: str) -> str:
    return cursors.encode(since, number)


def decode_cursor(cursor: str) -> tuple[int, str] | None:
    """The position in an opt-out list cursor (an E.164 number), or None."""
    return cursors.decode(cursor, r"\+[1-9][0-9]{1,14}")


async def list_entries(
    conn: AsyncConnection,
    *,
    limit: int,
    since_ms: int | None = None,
    cursor: tuple[int, str] | None = None,
    opted_out_only: bool = True,
) -> tuple[list[dict[str, Any]], str | None]:
    """The listed numbers, newest first; the cursor continues after the last one."""
    query = select(optouts)
    if opted_out_only:
        query = query.where(optouts.c.opted_out.is_(True))
    if since_ms is not None:
        query = query.where(optouts.c.since >= since_ms)
    if cursor is not None:
        since, number = cursor
        query = query.where(
            or_(optouts.c.since < since, and_(optouts.c.since == since, optouts.c.number < number))
        )
    query = query.order_by(optouts.c.since.desc(), optouts.c.number.desc()).limit(limit + 1)
    rows = [dict(r._mapping) for r in await conn.execute(query)]
    next_cursor = None
    if len(rows) > limit:
        rows = rows[:limit]
        next_cursor = encode_cursor(rows[-1]["since"], rows[-1]["number"])
    return rows, next_cursor
