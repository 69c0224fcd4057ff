"""The reconciler's reads and writes: claiming due messages, and what a lookup changes.

A message is due when `next_check_at` has passed; a claim (`claimed_until`, a lease) keeps
it to one replica at a time — FOR UPDATE SKIP LOCKED on PostgreSQL, where replicas claim
concurrently; SQLite has one writer anyway.
"""

from __future__ import annotations

from typing import Any, Literal

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from app.status import FINAL_RANK, MessageStatus
from app.store import claims, webhooks
from app.store.tables import messages

# What finishing a check did: the message is final (nothing more to do), was settled as
# it is (given up), was settled as `not_sent` (Plivo never had it), or is due again later.
CheckEnd = Literal["final", "settled", "not_sent", "rescheduled"]


async def claim_due(
    conn: AsyncConnection, *, now: int, batch: int, lease_ms: int
) -> list[dict[str, Any]]:
    """Claim up to `batch` messages due for a lookup (the earliest first) for `lease_ms`."""
    return await claims.claim_due(
        conn,
        messages,
        due=messages.c.next_check_at,
        now=now,
        batch=batch,
        lease_ms=lease_ms,
        returning=(
            messages.c.id,
            messages.c.message_uuid,
            messages.c.to_number,
            messages.c.status,
            messages.c.created_at,
            messages.c.attempt_started_at,
            messages.c.checks,
        ),
    )


async def release_claims(conn: AsyncConnection, message_ids: list[str]) -> None:
    """Hand claims back (shutting down): another replica may take the messages at once."""
    await claims.release(conn, messages, message_ids)


async def count_due(conn: AsyncConnection, now: int) -> int:
    count, _ = await claims.count_due(conn, messages, due=messages.c.next_check_at, now=now)
    return count


async def known_uuids(conn: AsyncConnection, uuids: list[str]) -> set[str]:
    """Which of these Plivo uuids already belong to a message of ours."""
    query = select(messages.c.message_uuid).where(messages.c.message_uuid.in_(uuids))
    return {uuid for uuid in (await conn.execute(query)).scalars() if uuid is not None}


async def adopt_uuid(conn: AsyncConnection, message_id: str, message_uuid: str, now: int) -> None:
    """An unknown outcome found at Plivo: the message takes its uuid (if it has none yet)."""
    await conn.execute(
        update(messages)
        .where(messages.c.id == message_id, messages.c.message_uuid.is_(None))
        .values(message_uuid=message_uuid, updated_at=now)
    )


async def finish_check(
    conn: AsyncConnection,
    message_id: str,
    *,
    checks: int,
    give_up: bool,
    settle_unknown: bool,
    next_check_at: int,
    now: int,
    targets: webhooks.Targets = webhooks.NO_TARGETS,
) -> CheckEnd:
    """Release the claim and decide the next check: none once the status is final or the
    message is given up on (an unknown outcome only when `settle_unknown`: Plivo answered
    it has no such message), else at `next_check_at`."""
    query = select(messages).where(messages.c.id == message_id)
    if targets.active:  # what changes here is a webhook event: the row stays as read
        query = query.with_for_update()
    current = (await conn.execute(query)).first()
    values: dict[str, Any] = {"claimed_until": None, "checks": checks + 1}
    end: CheckEnd
    if current is None or current.status_rank >= FINAL_RANK:
        values["next_check_at"] = None
        end = "final"
    elif give_up and (current.message_uuid is not None or settle_unknown):
        values["next_check_at"] = None  # settled as it is
        end = "settled"
        if current.message_uuid is None:  # Plivo never had it
            status = MessageStatus.NOT_SENT
            values.update(status=status, status_rank=status.rank, updated_at=now)
            end = "not_sent"
    else:
        values["next_check_at"] = next_check_at
        end = "rescheduled"
    await conn.execute(update(messages).where(messages.c.id == message_id).values(**values))
    if end == "not_sent" and current is not None and targets.active:
        row = {**current._mapping, **values}
        await webhooks.add_events(conn, targets, webhooks.status_events(targets, [row]))
    return end
