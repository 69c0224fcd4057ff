"""Retention: messages, events, inbound messages and callback nonces older than
RETENTION_DAYS are purged; idempotency records after 24 h (the opt-out list and its
history are kept). Runs shortly after start, then hourly, in every process
(the deletes are idempotent, so replicas doing it too is harmless)."""

from __future__ import annotations

import asyncio

from app.logging import get_logger
from app.store.db import Database, FunctionOp
from app.store.repository import purge

log = get_logger("app.retention")
FIRST_RUN_SECONDS = 60.0
INTERVAL_SECONDS = 3600.0


async def purge_once(db: Database, retention_days: float) -> int:
    retention_ms = int(retention_days * 86_400_000)
    deleted: int = await db.write(FunctionOp(lambda c: purge(c, retention_ms=retention_ms)))
    if deleted:
        log.info("retention_purged", rows=deleted)
    return deleted


async def retention_loop(db: Database, retention_days: float, stopping: asyncio.Event) -> None:
    delay = FIRST_RUN_SECONDS
    while not stopping.is_set():
        try:
            await asyncio.wait_for(stopping.wait(), delay)
            return
        except TimeoutError:
            pass
        try:
            await purge_once(db, retention_days)
        except Exception as exc:
            log.error("retention_failed", error=type(exc).__name__)
        delay = INTERVAL_SECONDS
