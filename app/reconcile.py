"""Reconciliation: ask Plivo what became of messages that have no final status.

Plivo's 202 means queued; callbacks may never come (no PUBLIC_BASE_URL, lost callbacks,
carriers without delivery receipts). After RECONCILE_AFTER_SECONDS a message is looked up
(Message Get by uuid; for an unknown outcome, Message list by destination and time
window), at most RECONCILE_RATE lookups/s per process, with growing intervals, until
RECONCILE_GIVE_UP_HOURS — then it is settled as it is (`sent` is often the last word US/CA
carriers give) and an unknown outcome Plivo never heard of becomes `not_sent`.
Each message is claimed by one replica at a time (a lease set with FOR UPDATE SKIP LOCKED
on PostgreSQL; SQLite has one writer anyway).
"""

from __future__ import annotations

import asyncio
import functools
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from app.callbacks.service import record_status
from app.config import Settings
from app.logging import get_logger
from app.plivo.client import PlivoClient, PlivoError, PlivoMessage
from app.status import STATUS_RANK, MessageStatus
from app.store import reconcile as store
from app.store.db import Database, FunctionOp
from app.store.repository import now_ms
from app.worker import ClaimingWorker

log = get_logger("app.reconcile")
LEASE_MS = 120_000
LOOKUP_TIMEOUT_SECONDS = 10.0
MAX_INTERVAL_MS = 6 * 3600 * 1000
WINDOW_SLACK = timedelta(minutes=2)  # clock skew between us and Plivo's message_time


def first_check_at(created_at: int, settings: Settings) -> int:
    return created_at + int(settings.reconcile_after_seconds * 1000)


def attempt_start(row: dict[str, Any]) -> int:
    """When the send toward Plivo began: the lookup window and the give-up time run from
    it (a scheduled message is sent long after it was accepted)."""
    started: int | None = row.get("attempt_started_at")
    return started if started is not None else int(row["created_at"])


class Reconciler(ClaimingWorker):
    """Claims one due message at a time (`app.worker`), paced to RECONCILE_RATE."""

    name = "reconciler"

    def __init__(self, db: Database, client: PlivoClient, settings: Settings) -> None:
        super().__init__(db)
        self.client = client
        self.settings = settings
        self._interval = 1.0 / settings.reconcile_rate
        self._next_slot = 0.0
        self.backlog = 0
        self.on_lookup: Any = None  # metrics hook: on_lookup(result: str)
        self.on_backlog: Any = None  # metrics hook: on_backlog(backlog: int)

    async def claim(self, conn: AsyncConnection, limit: int) -> list[dict[str, Any]]:
        return await store.claim_due(conn, now=now_ms(), batch=limit, lease_ms=LEASE_MS)

    async def release(self, conn: AsyncConnection, rows: list[dict[str, Any]]) -> None:
        await store.release_claims(conn, [row["id"] for row in rows])

    async def after_claim(self) -> None:
        self.backlog = await self._count_due()
        if self.on_backlog:
            self.on_backlog(self.backlog)

    async def handle(self, row: dict[str, Any]) -> None:
        await self._pace()
        await self._check(row)

    async def _pace(self) -> None:
        """At most RECONCILE_RATE lookups per second in this process."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        self._next_slot = max(self._next_slot, now)
        delay = self._next_slot - now
        self._next_slot += self._interval
        if delay > 0:
            await asyncio.sleep(delay)

    async def _count_due(self) -> int:
        async with self.db.read() as conn:
            return await store.count_due(conn, now_ms())

    async def _check(self, row: dict[str, Any]) -> None:
        now = now_ms()
        give_up = now >= attempt_start(row) + int(self.settings.reconcile_give_up_hours * 3600_000)
        try:
            found = await self._look_up(row)
            result = "found" if found else "not_found"
        except PlivoError as exc:
            log.warning("reconcile_lookup_failed", message_id=row["id"], error=str(exc))
            found, result = None, "error"
        if self.on_lookup:
            self.on_lookup(result)
        if found is not None:
            await self._apply(row, found)
        # An unknown outcome becomes `not_sent` only when Plivo answered it has no such
        # message — never because the last lookup failed.
        settle_unknown = give_up and result == "not_found"
        base = int(self.settings.reconcile_after_seconds * 1000) or 1000
        finish = functools.partial(
            store.finish_check,
            message_id=row["id"],
            checks=row["checks"],
            give_up=give_up,
            settle_unknown=settle_unknown,
            next_check_at=now_ms() + min(base * 2 ** row["checks"], MAX_INTERVAL_MS),
            now=now_ms(),
            targets=self.db.webhooks,
        )
        end = await self.db.write(FunctionOp(finish))
        if end in ("settled", "not_sent"):
            status = MessageStatus.NOT_SENT if end == "not_sent" else None
            log.info("reconcile_gave_up", message_id=row["id"], status=status)

    async def _look_up(self, row: dict[str, Any]) -> PlivoMessage | None:
        if row["message_uuid"]:
            return await self.client.get_message(
                row["message_uuid"], timeout=LOOKUP_TIMEOUT_SECONDS
            )
        # Unknown outcome: did Plivo queue a message to this number around that time?
        created = datetime.fromtimestamp(attempt_start(row) / 1000, UTC)
        until = created + timedelta(seconds=self.settings.plivo_timeout_seconds) + WINDOW_SLACK
        candidates = await self.client.list_messages(
            to=row["to_number"],
            since=created - WINDOW_SLACK,
            until=until,
            timeout=LOOKUP_TIMEOUT_SECONDS,
        )
        uuids = [c.message_uuid for c in candidates if c.message_uuid]
        if not uuids:
            return None
        async with self.db.read() as conn:
            known = await store.known_uuids(conn, uuids)
        unclaimed = [c for c in candidates if c.message_uuid and c.message_uuid not in known]
        unclaimed.sort(key=lambda c: c.message_time or created)
        return unclaimed[0] if unclaimed else None

    async def _apply(self, row: dict[str, Any], found: PlivoMessage) -> None:
        if not row["message_uuid"]:
            adopt = functools.partial(
                store.adopt_uuid,
                message_id=row["id"],
                message_uuid=found.message_uuid,
                now=now_ms(),
            )
            await self.db.write(FunctionOp(adopt))
            log.info("reconcile_adopted", message_id=row["id"], message_uuid=found.message_uuid)
        if found.state in STATUS_RANK:
            await record_status(
                self.db,
                message_uuid=found.message_uuid,
                status=found.state,
                error_code=found.error_code,
                source="reconcile",
            )
