"""`python -m app webhooks list [pending|delivered|failed]` and `python -m app webhooks
retry <id>`: the operator's tools for deliveries to the `*` endpoint, which belong to no
caller key (callers manage their own over the API)."""

from __future__ import annotations

import sys

from app.config import Settings
from app.logging import get_logger
from app.optouts.cli import operator
from app.store import webhooks as store
from app.store.db import Database, FunctionOp
from app.store.repository import iso_utc, now_ms

log = get_logger("app.webhooks")
USAGE = (
    "usage: python -m app webhooks list [pending|delivered|failed] | "
    "python -m app webhooks retry <id>"
)
PAGE = 500


async def run(argv: list[str], settings: Settings) -> int:
    if argv[:1] == ["list"] and len(argv) <= 2:
        status = argv[1] if len(argv) == 2 else None
        if status is not None and status not in store.DELIVERY_STATUSES:
            print(USAGE, file=sys.stderr)
            return 2
        return await list_all(settings, status)
    if argv[:1] == ["retry"] and len(argv) == 2:
        return await retry(settings, argv[1])
    print(USAGE, file=sys.stderr)
    return 2


async def list_all(settings: Settings, status: str | None) -> int:
    """The `*` endpoint's deliveries, newest first: id, created (UTC), type, status,
    attempts, last error."""
    db = Database(settings.database_url)
    await db.start()
    try:
        cursor = None
        while True:
            async with db.read() as conn:
                rows, next_cursor = await store.list_deliveries(
                    conn, None, limit=PAGE, status=status, cursor=cursor
                )
            for row in rows:
                fields = (
                    row["id"],
                    iso_utc(row["created_at"]),
                    row["type"],
                    row["status"],
                    str(row["attempts"]),
                    row["last_error"] or "",
                )
                print("\t".join(fields))
            if next_cursor is None:
                return 0
            cursor = store.decode_cursor(next_cursor)
    finally:
        await db.close()


async def retry(settings: Settings, delivery_id: str) -> int:
    if not store.is_delivery_id(delivery_id):
        print(f"{delivery_id!r} is not a delivery id (msg_ and 32 hex digits)", file=sys.stderr)
        return 2
    db = Database(settings.database_url)
    await db.start()
    try:
        now = now_ms()
        row = await db.write(FunctionOp(lambda c: store.retry(c, None, delivery_id, now)))
    finally:
        await db.close()
    if row is None:
        print(f"no delivery {delivery_id} to the * endpoint", file=sys.stderr)
        return 1
    if row["status"] != store.FAILED:
        print(f"{delivery_id} is {row['status']}, not failed; nothing changed", file=sys.stderr)
        return 1
    log.info("webhook_requeued", delivery_id=delivery_id, by=f"cli:{operator()}")
    print(f"{delivery_id} re-queued; a running service attempts it within seconds")
    return 0
