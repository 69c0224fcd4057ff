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
import contextlib
import functools
import math
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from app.callbacks.service import record_status
from app.config import Settings
from app.logging import get_logger
from app.plivo.client import PlivoClient, PlivoError, PlivoMessage
from app.status import FINAL_RANK, STATUS_RANK, MessageStatus
from app.store.db import Database, FunctionOp
from app.store.repository import now_ms
from app.store.tables import messages

log = get_logger("app.reconcile")
LEASE_MS = 120_000
LOOKUP_TIMEOUT_SECONDS = 10.0
MAX_INTERVAL_MS = 6 * 3600 * 1000
IDLE_POLL_SECONDS = 2.0
WINDOW_SLACK = timedelta(minutes=2)  # clock skew between us and Plivo's message_time


def first_check_at(created_at: int, settings: Settings) -> int:
    return created_at + int(settings.reconcile_after_seconds * 1000)


class Reconciler:
    def __init__(self, db: Database, client: PlivoClient, settings: Settings) -> None:
        self.db = db
        self.client = client
        self.settings = settings
        self._interval = 1.0 / settings.reconcile_rate
        self._next_slot = 0.0
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.backlog = 0
        self.on_lookup: Any = None  # metrics hook: on_lookup(result: str)
        self.on_backlog: Any = None  # metrics hook: on_backlog(backlog: int)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="reconciler")

    async def stop(self) -> None:
        self._stopping.set()
        if self._task is not None:
            try:
                await self._task
            except Exception as exc:  # never let it stop the rest of the shutdown
                log.error("reconciler_failed", error=type(exc).__name__)

    async def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                claimed = await self.db.write(FunctionOp(self._claim))
                self.backlog = await self._count_due()
                if self.on_backlog:
                    self.on_backlog(self.backlog)
            except Exception as exc:  # the store is down: /ready says so; try again later
                log.error("reconcile_claim_failed", error=type(exc).__name__)
                claimed = []
            for row in claimed:
                try:
                    if self._stopping.is_set():  # hand the claim back for another replica
                        release = functools.partial(self._release, id=row["id"])
                        await self.db.write(FunctionOp(release))
                        continue
                    await self._pace()
                    await self._check(row)
                except Exception as exc:  # one message's trouble; its lease lets it retry
                    log.error("reconcile_failed", message_id=row["id"], error=type(exc).__name__)
            if not claimed:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), IDLE_POLL_SECONDS)

    async def _pace(self) -> None:
        """At most RECONCILE_RATE lookups per second in this process."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        self._next_slot = max(self._next_slot, now)
        delay = self._next_slot - now
        self._next_slot += self._interval
        if delay > 0:
            await asyncio.sleep(delay)

    async def _claim(self, conn: AsyncConnection) -> list[dict[str, Any]]:
        now = now_ms()
        batch = max(1, math.ceil(self.settings.reconcile_rate * 10))  # ~10 s of lookups
        due = (
            select(messages.c.id)
            .where(
                messages.c.next_check_at <= now,
                (messages.c.claimed_until.is_(None)) | (messages.c.claimed_until < now),
            )
            .order_by(messages.c.next_check_at)
            .limit(batch)
            .with_for_update(skip_locked=True)  # one replica per message (PostgreSQL)
        )
        result = await conn.execute(
            update(messages)
            .where(messages.c.id.in_(due.scalar_subquery()))
            .values(claimed_until=now + LEASE_MS)
            .returning(
                messages.c.id,
                messages.c.message_uuid,
                messages.c.to_number,
                messages.c.status,
                messages.c.created_at,
                messages.c.checks,
            )
        )
        return [dict(r._mapping) for r in result]

    async def _count_due(self) -> int:
        from sqlalchemy import func

        async with self.db.read() as conn:
            result = await conn.execute(
                select(func.count())
                .select_from(messages)
                .where(messages.c.next_check_at <= now_ms())
            )
            return int(result.scalar_one())

    async def _release(self, conn: AsyncConnection, *, id: str) -> None:
        await conn.execute(update(messages).where(messages.c.id == id).values(claimed_until=None))

    async def _check(self, row: dict[str, Any]) -> None:
        now = now_ms()
        give_up = now >= row["created_at"] + int(self.settings.reconcile_give_up_hours * 3600_000)
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
        await self.db.write(FunctionOp(lambda c: self._reschedule(c, row, give_up, settle_unknown)))

    async def _look_up(self, row: dict[str, Any]) -> PlivoMessage | None:
        if row["message_uuid"]:
            return await self.client.get_message(
                row["message_uuid"], timeout=LOOKUP_TIMEOUT_SECONDS
            )
        # Unknown outcome: did Plivo queue a message to this number around that time?
        created = datetime.fromtimestamp(row["created_at"] / 1000, UTC)
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
            known = set(
                (
                    await conn.execute(
                        select(messages.c.message_uuid).where(messages.c.message_uuid.in_(uuids))
                    )
                ).scalars()
            )
        unclaimed = [c for c in candidates if c.message_uuid and c.message_uuid not in known]
        unclaimed.sort(key=lambda c: c.message_time or created)
        return unclaimed[0] if unclaimed else None

    async def _apply(self, row: dict[str, Any], found: PlivoMessage) -> None:
        if not row["message_uuid"]:

            async def adopt(conn: AsyncConnection) -> None:
                await conn.execute(
                    update(messages)
                    .where(messages.c.id == row["id"], messages.c.message_uuid.is_(None))
                    .values(message_uuid=found.message_uuid, updated_at=now_ms())
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

    async def _reschedule(
        self, conn: AsyncConnection, row: dict[str, Any], give_up: bool, settle_unknown: bool
    ) -> None:
        current = (
            await conn.execute(
                select(messages.c.status_rank, messages.c.message_uuid).where(
                    messages.c.id == row["id"]
                )
            )
        ).first()
        values: dict[str, Any] = {"claimed_until": None, "checks": row["checks"] + 1}
        if current is None or current.status_rank >= FINAL_RANK:
            values["next_check_at"] = None
        elif give_up and (current.message_uuid is not None or settle_unknown):
            values["next_check_at"] = None  # settled as it is
            if current.message_uuid is None:  # Plivo never had it
                values.update(
                    status=MessageStatus.NOT_SENT, status_rank=FINAL_RANK, updated_at=now_ms()
                )
            log.info("reconcile_gave_up", message_id=row["id"], status=values.get("status"))
        else:
            base = int(self.settings.reconcile_after_seconds * 1000) or 1000
            values["next_check_at"] = now_ms() + min(base * 2 ** row["checks"], MAX_INTERVAL_MS)
        await conn.execute(update(messages).where(messages.c.id == row["id"]).values(**values))
