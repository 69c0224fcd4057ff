"""`python -m app optouts list` and `python -m app optouts remove +1…`: the operator's
tools. Removing a number is the one way off the list besides the recipient's own START,
so it is logged (who: the OS user; what; when) and kept in the number's history."""

from __future__ import annotations

import getpass
import os
import sys
from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncConnection

from app.config import Settings
from app.logging import get_logger
from app.phone import canonical_problem
from app.store import optouts
from app.store.db import Database, FunctionOp
from app.store.repository import now_ms
from app.webhooks.events import targets_for

log = get_logger("app.optouts")
USAGE = "usage: python -m app optouts list | python -m app optouts remove +1…"
PAGE = 500


def operator() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (some containers): the uid says who
        return f"uid{os.getuid()}"


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds")[:-6] + "Z"


async def run(argv: list[str], settings: Settings) -> int:
    if argv[:1] == ["list"] and len(argv) == 1:
        return await list_all(settings)
    if argv[:1] == ["remove"] and len(argv) == 2:
        return await remove(settings, argv[1])
    print(USAGE, file=sys.stderr)
    return 2


async def list_all(settings: Settings) -> int:
    """Every listed number, newest first: number, since (UTC), source."""
    db = Database(settings.database_url)
    await db.start()  # migrates first: a fresh store has an empty list
    try:
        cursor = None
        while True:
            async with db.read() as conn:
                rows, next_cursor = await optouts.list_entries(conn, limit=PAGE, cursor=cursor)
            for row in rows:
                print(f"{row['number']}\t{_iso(row['since'])}\t{row['source']}")
            if next_cursor is None:
                return 0
            cursor = optouts.decode_cursor(next_cursor)
    finally:
        await db.close()


async def remove(settings: Settings, number: str) -> int:
    problem = canonical_problem(number)
    if problem:
        print(f"{number!r} {problem}", file=sys.stderr)
        return 2
    user = operator()
    source = f"cli:{user}"
    db = Database(settings.database_url)
    db.webhooks = targets_for(settings)  # the `*` endpoint hears of it
    await db.start()
    try:
        at = now_ms()

        async def take_off(conn: AsyncConnection) -> bool:
            return await optouts.change(
                conn,
                number=number,
                action="optin",
                source=source,
                at=at,
                reference=user,
                targets=db.webhooks,
            )

        changed = await db.write(FunctionOp(take_off))
    finally:
        await db.close()
    if not changed:
        print(f"{number} is not on the opt-out list; nothing changed", file=sys.stderr)
        return 1
    log.warning("optout_removed_by_operator", user=user, number=number, at=_iso(at))
    print(f"{number} removed from the opt-out list by {user} at {_iso(at)}")
    return 0
