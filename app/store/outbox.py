"""The outbox's reads and writes: scheduled messages on the `messages` table.

A message waits in the outbox while its status is `scheduled`; `send_at` is its due time
(the claim's due column, NULL once it leaves) and `claimed_until` the lease of the replica
that claimed it (`app.store.claims`). The lease value a claim wrote is also its fencing
token: every later write of the holder is conditional on it, so a holder whose lease
expired and whose row another replica claimed changes nothing.

Every status change of a message the outbox makes goes through `change_status` (one
place): `canceled` (by the caller, or at send time), `not_sent` (given up), `unknown` (a
holder died mid-send). The send's own outcome (`queued`, `unknown`, `rejected`) is
recorded by `app.store.repository.RecordMessage`, exactly as for a synchronous send.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import ColumnElement, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from app.status import MessageStatus
from app.store import claims, webhooks
from app.store.db import BatchedOp, Database, StoreUnavailable
from app.store.optouts import sqlite_reader
from app.store.tables import messages

SCHEDULED = MessageStatus.SCHEDULED.value
CLAIMED_COLUMNS = (
    messages.c.id,
    messages.c.caller,
    messages.c.to_number,
    messages.c.text,
    messages.c.media_urls,
    messages.c.media_count,
    messages.c.idempotency_key,
    messages.c.request_id,
    messages.c.created_at,
    messages.c.send_at,
    messages.c.scheduled_for,
    messages.c.attempt_started_at,
    messages.c.attempts,
    messages.c.quiet_hours,
    messages.c.claimed_until,
)


@dataclass
class InsertScheduled(BatchedOp):
    """Record an accepted asynchronous send (status `scheduled`) before the 202."""

    row: dict[str, Any]

    @classmethod
    async def run_many(cls, conn: AsyncConnection, ops: Sequence[Any]) -> list[Any]:
        await conn.execute(messages.insert(), [op.row for op in ops])
        return [None] * len(ops)


_PENDING = "SELECT count(*) FROM messages WHERE caller = ? AND send_at IS NOT NULL"


async def pending_count(db: Database, caller: str) -> int:
    """Scheduled messages of one caller (the partial index on caller, send_at). On SQLite
    through the plain reader of the hot lookups (decision 0016): a pooled SQLAlchemy
    connection cost more CPU than the rest of an acceptance."""
    reader = sqlite_reader(db)
    if reader is None:
        query = (
            select(func.count())
            .select_from(messages)
            .where(messages.c.caller == caller, messages.c.send_at.isnot(None))
        )
        async with db.read() as conn:
            return int((await conn.execute(query)).scalar_one())
    try:
        return int(reader.execute(_PENDING, (caller,)).fetchall()[0][0])
    except sqlite3.Error as exc:
        raise StoreUnavailable(type(exc).__name__) from exc


class PendingCounts:
    """Each key's scheduled messages as this process last counted them, plus what it has
    accepted since: the count is an index range as long as the key's backlog, which made
    every acceptance of a bulk send slower than the one before. The store is counted again
    once the estimate is a second old, and at every acceptance within the last tenth of the
    cap: there the check is the store's count, as before (acceptances in flight at the same
    moment can still overshoot the cap by a few). Far from the cap, the estimate may miss up
    to a second of other replicas' acceptances."""

    REFRESH_SECONDS = 1.0
    NEAR_CAP = 0.9

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        counter: Callable[[Database, str], Awaitable[int]] | None = None,
    ) -> None:
        self._clock = clock
        self._counter = counter or pending_count  # injectable for the unit tests
        self._counts: dict[str, tuple[int, float]] = {}  # caller -> (estimate, counted at)

    async def count(self, db: Database, caller: str, cap: int) -> int:
        now = self._clock()
        known = self._counts.get(caller)
        if known is not None:
            estimate, counted_at = known
            if now - counted_at < self.REFRESH_SECONDS and estimate < cap * self.NEAR_CAP:
                return estimate
        counted = await self._counter(db, caller)
        self._counts[caller] = (counted, now)
        return counted

    def accepted(self, caller: str) -> None:
        """One more scheduled message of `caller`, recorded by this process."""
        known = self._counts.get(caller)
        if known is not None:
            self._counts[caller] = (known[0] + 1, known[1])


async def claim_due(
    conn: AsyncConnection, *, now: int, batch: int, lease_ms: int
) -> list[dict[str, Any]]:
    """Claim up to `batch` scheduled messages due by `now`, the earliest first."""
    return await claims.claim_due(
        conn,
        messages,
        due=messages.c.send_at,
        now=now,
        batch=batch,
        lease_ms=lease_ms,
        returning=CLAIMED_COLUMNS,
        where=(messages.c.status == SCHEDULED,),
    )


async def release_claims(conn: AsyncConnection, message_ids: list[str]) -> None:
    """Hand claims back (shutting down, or pacing paused): claimed again at once."""
    await claims.release(conn, messages, message_ids)


async def backlog(conn: AsyncConnection, now: int) -> tuple[int, int | None, int]:
    """(messages due by `now`, the earliest due time, messages due later)."""
    due, oldest = await claims.count_due(
        conn, messages, due=messages.c.send_at, now=now, where=(messages.c.send_at.isnot(None),)
    )
    later = (
        await conn.execute(
            select(func.count()).select_from(messages).where(messages.c.send_at > now)
        )
    ).scalar_one()
    return due, oldest, int(later)


def _held(message_id: str, token: int) -> tuple[ColumnElement[bool], ...]:
    """Still ours: the row is scheduled and carries the lease value our claim wrote."""
    return (
        messages.c.id == message_id,
        messages.c.claimed_until == token,
        messages.c.status == SCHEDULED,
    )


async def mark_attempt(
    conn: AsyncConnection, message_id: str, *, token: int, now: int, lease_until: int
) -> bool:
    """The attempt's start, committed before the POST (and the lease stretched over it).
    False when the claim is no longer ours: then nothing may be sent."""
    result = await conn.execute(
        update(messages)
        .where(*_held(message_id, token), messages.c.attempt_started_at.is_(None))
        .values(
            attempt_started_at=now,
            claimed_until=lease_until,
            updated_at=now,
        )
    )
    return result.rowcount == 1


async def reschedule(
    conn: AsyncConnection, message_id: str, *, token: int, send_at: int, now: int, failed: bool
) -> bool:
    """Stay `scheduled`, due again at `send_at`, unclaimed; the attempt mark (if any) is
    cleared: Plivo certainly did not take the message. `failed`: a try that did not send
    (counted in `attempts`, which sets the backoff), not a deferral (a limit, the window)."""
    result = await conn.execute(
        update(messages)
        .where(*_held(message_id, token))
        .values(
            send_at=send_at,
            claimed_until=None,
            attempt_started_at=None,
            updated_at=now,
            attempts=messages.c.attempts + (1 if failed else 0),
        )
    )
    return result.rowcount == 1


async def change_status(
    conn: AsyncConnection,
    message_id: str,
    status: MessageStatus,
    *,
    where: Sequence[ColumnElement[bool]],
    now: int,
    keep_text: bool,
    targets: webhooks.Targets = webhooks.NO_TARGETS,
    **values: Any,
) -> bool:
    """The one way the outbox moves a message out of `scheduled`. It leaves the outbox
    (`send_at` NULL); its text is erased unless STORE_MESSAGE_TEXT. The new status is a
    `message.status` webhook event, written in the same transaction."""
    if not keep_text:
        values["text"] = None
    result = await conn.execute(
        update(messages)
        .where(messages.c.id == message_id, *where)
        .values(
            status=status.value,
            status_rank=status.rank,
            send_at=None,
            updated_at=now,
            **values,
        )
    )
    if result.rowcount != 1:
        return False
    if targets.active:
        row = (await conn.execute(select(messages).where(messages.c.id == message_id))).one()
        await webhooks.add_events(
            conn, targets, webhooks.status_events(targets, [dict(row._mapping)])
        )
    return True


async def cancel_claimed(
    conn: AsyncConnection,
    message_id: str,
    *,
    token: int,
    reason: str,
    now: int,
    keep_text: bool,
    targets: webhooks.Targets = webhooks.NO_TARGETS,
) -> bool:
    """Canceled at send time: the recipient opted out, or the caller's key was removed."""
    return await change_status(
        conn,
        message_id,
        MessageStatus.CANCELED,
        where=_held(message_id, token),
        now=now,
        keep_text=keep_text,
        targets=targets,
        cancel_reason=reason,
        claimed_until=None,
        next_check_at=None,
    )


async def give_up(
    conn: AsyncConnection,
    message_id: str,
    *,
    token: int,
    now: int,
    keep_text: bool,
    targets: webhooks.Targets = webhooks.NO_TARGETS,
) -> bool:
    """Plivo never took it, and OUTBOX_GIVE_UP_HOURS have passed: `not_sent`."""
    return await change_status(
        conn,
        message_id,
        MessageStatus.NOT_SENT,
        where=_held(message_id, token),
        now=now,
        keep_text=keep_text,
        targets=targets,
        claimed_until=None,
        attempt_started_at=None,
        next_check_at=None,
    )


async def lost_attempt(
    conn: AsyncConnection,
    message_id: str,
    *,
    token: int,
    now: int,
    next_check_at: int,
    keep_text: bool,
    targets: webhooks.Targets = webhooks.NO_TARGETS,
) -> bool:
    """A claimed message whose attempt mark is set: its holder died during the send.
    Plivo may have it, so it is an unknown outcome for reconciliation, never sent again."""
    return await change_status(
        conn,
        message_id,
        MessageStatus.UNKNOWN,
        where=(*_held(message_id, token), messages.c.attempt_started_at.isnot(None)),
        now=now,
        keep_text=keep_text,
        targets=targets,
        claimed_until=None,
        next_check_at=next_check_at,
    )


CancelEnd = Literal["canceled", "already_canceled", "not_cancelable", "not_found"]


async def cancel_by_caller(
    conn: AsyncConnection,
    caller: str,
    ident: str,
    *,
    now: int,
    keep_text: bool,
    targets: webhooks.Targets = webhooks.NO_TARGETS,
) -> tuple[CancelEnd, str | None]:
    """DELETE /api/mms/{id}: cancel a scheduled message that no outbox is sending.

    One conditional UPDATE decides against a concurrent claim (the claim's own condition
    re-checks the status; on PostgreSQL the later of the two waits for the row lock and
    re-evaluates): exactly one of them wins. Returns what happened and the message id."""
    ours = (
        messages.c.caller == caller,
        or_(messages.c.id == ident, messages.c.message_uuid == ident),
    )
    found = (await conn.execute(select(messages.c.id, messages.c.status).where(*ours))).first()
    if found is None:
        return "not_found", None
    canceled = await change_status(
        conn,
        found.id,
        MessageStatus.CANCELED,
        where=(
            messages.c.status == SCHEDULED,
            messages.c.attempt_started_at.is_(None),
            or_(messages.c.claimed_until.is_(None), messages.c.claimed_until < now),
        ),
        now=now,
        keep_text=keep_text,
        targets=targets,
        cancel_reason="caller",
        claimed_until=None,
    )
    if canceled:
        return "canceled", found.id
    status = (
        await conn.execute(select(messages.c.status).where(messages.c.id == found.id))
    ).scalar()
    if status == MessageStatus.CANCELED.value:
        return "already_canceled", found.id
    return "not_cancelable", found.id
