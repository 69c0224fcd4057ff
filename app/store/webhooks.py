"""Webhook deliveries' SQL: events inserted with the change that causes them, claims,
outcomes, the caller's listing and the operator's retry.

An event is a row per endpoint in `webhook_deliveries`, inserted by `add_events` inside
the transaction of the change (the transactional outbox): a change that rolls back leaves
no event, and a committed one cannot lose its event in a crash. Every write that changes
a message's status, stores an inbound message or changes the opt-out list calls it.
Which endpoints get an event is `Targets`' business: a caller key's own endpoint and the
`*` endpoint get its `message.status` events; only `*` gets the others. With no endpoint
configured nothing is read or written.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from sqlalchemy import (
    BigInteger,
    Boolean,
    Integer,
    String,
    and_,
    bindparam,
    case,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection

from app.ids import random_id
from app.status import STATUS_RANK
from app.store import claims, cursors
from app.store.db import BatchedOp
from app.store.tables import messages, webhook_deliveries

ALL = "*"
MAX_PAYLOAD_BYTES = 65_536
PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"
DELIVERY_STATUSES = (PENDING, DELIVERED, FAILED)
MESSAGE_STATUS = "message.status"
MESSAGE_INBOUND = "message.inbound"
OPTOUT_CHANGED = "optout.changed"
ID_PREFIX = "msg_"  # Standard Webhooks' examples name message ids so


def _no_data(row: dict[str, Any]) -> dict[str, Any]:
    return {}


def iso(ms: int) -> str:
    from app.store.repository import iso_utc  # the one formatter (imported late: a cycle)

    return iso_utc(ms)


@dataclass(frozen=True)
class Targets:
    """Which endpoints are configured: key names with their own endpoint, and whether a
    `*` endpoint takes everything. `message_data` turns a message row into the `data` of
    its `message.status` event (the lookup's serialisation); `on_event` is called when
    events were added (the local worker wakes up)."""

    callers: frozenset[str] = frozenset()
    everything: bool = False
    message_data: Callable[[dict[str, Any]], dict[str, Any]] = _no_data
    on_event: Callable[[], None] | None = None

    @property
    def active(self) -> bool:
        return self.everything or bool(self.callers)

    def endpoints_for(self, caller: str | None) -> list[str]:
        """Endpoint names for an event of `caller` (None: not a caller's event, `*` only)."""
        names = [caller] if caller is not None and caller in self.callers else []
        if self.everything:
            names.append(ALL)
        return names

    def wants(self, caller: str | None) -> bool:
        return self.everything or (caller is not None and caller in self.callers)


NO_TARGETS = Targets()


@dataclass
class Event:
    type: str
    at: int  # the event's time (epoch ms): the body's `timestamp`
    data: dict[str, Any]
    caller: str | None = None  # message.status: the message's key; None: `*` endpoints only
    text: str | None = field(default=None, repr=False)  # inbound text, kept apart (erased)


def body_of(event_type: str, at: int, data: dict[str, Any]) -> bytes:
    return orjson.dumps({"type": event_type, "timestamp": iso(at), "data": data})


async def add_events(conn: AsyncConnection, targets: Targets, events: Sequence[Event]) -> int:
    """Insert one delivery per event per endpoint that wants it; returns rows inserted."""
    rows = []
    for event in events:
        endpoints = targets.endpoints_for(event.caller)
        if not endpoints:
            continue
        payload = body_of(event.type, event.at, event.data)
        if len(payload) + len((event.text or "").encode()) > MAX_PAYLOAD_BYTES:
            payload = _shrunk(event)
        text = payload.decode()
        for name in endpoints:
            rows.append(
                {
                    "id": ID_PREFIX + random_id(),
                    "endpoint": name,
                    "caller": None if name == ALL else event.caller,
                    "type": event.type,
                    "payload": text,
                    "text": event.text,
                    "status": PENDING,
                    "attempts": 0,
                    "next_attempt_at": event.at,
                    "claimed_until": None,
                    "last_error": None,
                    "created_at": event.at,
                    "updated_at": event.at,
                }
            )
    if rows:
        await conn.execute(webhook_deliveries.insert(), rows)
        if targets.on_event is not None:
            targets.on_event()
    return len(rows)


def _shrunk(event: Event) -> bytes:
    """Over 64 KiB (an inbound message with long media URLs): the media list is cut, the
    text dropped last. Message statuses are a few hundred bytes."""
    data = dict(event.data)
    if "media" in data:
        data["media"], data["mediaTruncated"] = [], True
    payload = body_of(event.type, event.at, data)
    if len(payload) + len((event.text or "").encode()) > MAX_PAYLOAD_BYTES:
        event.text = None
    return payload


# message.status ------------------------------------------------------------------------------
SILENT_STATUSES = frozenset({"scheduled"})  # not an event: the caller's 202 said so


def status_events(targets: Targets, rows: Sequence[dict[str, Any]]) -> list[Event]:
    """`message.status` events for message rows as they now are (`data`: the lookup's
    message without its history), for the rows whose key has an endpoint."""
    return [
        Event(
            type=MESSAGE_STATUS,
            at=row["updated_at"],
            data=targets.message_data(row),
            caller=row["caller"],
        )
        for row in rows
        if row["status"] not in SILENT_STATUSES and targets.wants(row["caller"])
    ]


async def lock_messages(
    conn: AsyncConnection, *, ids: Sequence[str] = (), uuids: Sequence[str] = ()
) -> list[dict[str, Any]]:
    """The messages' rows, locked until the commit (PostgreSQL; SQLite has one writer), so
    what the change then does to them is known exactly. In id order: two replicas lock
    the same rows in the same order (no deadlock)."""
    conditions = []
    if ids:
        conditions.append(messages.c.id.in_(list(ids)))
    if uuids:
        conditions.append(messages.c.message_uuid.in_(list(uuids)))
    if not conditions:
        return []
    query = select(messages).where(or_(*conditions)).order_by(messages.c.id).with_for_update()
    return [dict(r._mapping) for r in await conn.execute(query)]


def advanced(
    row: dict[str, Any], status: str, error_code: str | None, at: int
) -> dict[str, Any] | None:
    """The row after a status report, or None when the report changes nothing (a status
    only moves up in rank) — what the store's conditional update does, in Python."""
    rank = STATUS_RANK.get(status)
    if rank is None or row["status_rank"] >= rank:
        return None
    return {
        **row,
        "status": status,
        "status_rank": rank,
        "error_code": error_code if error_code is not None else row["error_code"],
        "updated_at": at,
    }


# The worker's claims and outcomes ----------------------------------------------------------
async def claim_due(
    conn: AsyncConnection,
    *,
    now: int,
    batch: int,
    lease_ms: int,
    skip_endpoints: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """Claim up to `batch` due deliveries (the earliest first) for `lease_ms`, none of the
    endpoints in `skip_endpoints` (at their concurrency cap)."""
    where = [webhook_deliveries.c.status == PENDING]
    if skip_endpoints:
        where.append(webhook_deliveries.c.endpoint.not_in(list(skip_endpoints)))
    return await claims.claim_due(
        conn,
        webhook_deliveries,
        due=webhook_deliveries.c.next_attempt_at,
        now=now,
        batch=batch,
        lease_ms=lease_ms,
        where=where,
        returning=(
            webhook_deliveries.c.id,
            webhook_deliveries.c.endpoint,
            webhook_deliveries.c.type,
            webhook_deliveries.c.payload,
            webhook_deliveries.c.text,
            webhook_deliveries.c.attempts,
            webhook_deliveries.c.created_at,
            webhook_deliveries.c.claimed_until,
        ),
    )


async def release_claims(conn: AsyncConnection, ids: list[str]) -> None:
    await claims.release(conn, webhook_deliveries, ids)


_FINISH_TEXT = bindparam("f_clear_text", type_=Boolean)
_finish = (
    update(webhook_deliveries)
    .where(
        webhook_deliveries.c.id == bindparam("f_id"),
        # Only while the lease taken is still ours: once it ran out, another claim owns it.
        webhook_deliveries.c.claimed_until == bindparam("f_lease", type_=BigInteger),
    )
    .values(
        attempts=bindparam("f_attempts", type_=Integer),
        claimed_until=None,
        last_error=bindparam("f_error", type_=String),
        updated_at=bindparam("f_now", type_=BigInteger),
        next_attempt_at=bindparam("f_next", type_=BigInteger),
        status=bindparam("f_status", type_=String),
        text=case((_FINISH_TEXT, None), else_=webhook_deliveries.c.text),
    )
)


@dataclass
class FinishAttempt(BatchedOp):
    """Record an attempt's outcome: delivered, due again at `next_attempt_at`, or failed
    (neither). Finished attempts of one batch are one statement."""

    delivery_id: str
    lease: int
    attempts: int
    next_attempt_at: int | None
    delivered: bool
    error: str | None
    now: int
    keep_text: bool

    def params(self) -> dict[str, Any]:
        status = DELIVERED if self.delivered else (PENDING if self.next_attempt_at else FAILED)
        return {
            "f_id": self.delivery_id,
            "f_lease": self.lease,
            "f_attempts": self.attempts,
            "f_error": self.error[:200] if self.error else None,
            "f_now": self.now,
            "f_next": None if self.delivered else self.next_attempt_at,
            "f_status": status,
            # Final: an inbound message's text goes.
            "f_clear_text": status != PENDING and not self.keep_text,
        }

    @classmethod
    async def run_many(cls, conn: AsyncConnection, ops: Sequence[Any]) -> list[Any]:
        await conn.execute(_finish, [op.params() for op in ops])
        return [None] * len(ops)


async def give_up(
    conn: AsyncConnection, delivery_id: str, lease: int, error: str, now: int
) -> None:
    """An endpoint no longer configured: the delivery fails at once (retry re-queues it)."""
    await conn.execute(
        update(webhook_deliveries)
        .where(webhook_deliveries.c.id == delivery_id, webhook_deliveries.c.claimed_until == lease)
        .values(
            status=FAILED,
            next_attempt_at=None,
            claimed_until=None,
            last_error=error[:200],
            text=None,
            updated_at=now,
        )
    )


async def erase_old_text(conn: AsyncConnection, *, before: int) -> int:
    """Inbound text in pending deliveries older than `before` is erased (24 h)."""
    result = await conn.execute(
        update(webhook_deliveries)
        .where(webhook_deliveries.c.text.is_not(None), webhook_deliveries.c.created_at < before)
        .values(text=None)
    )
    return result.rowcount or 0


async def backlog(conn: AsyncConnection) -> tuple[int, int | None]:
    """Pending deliveries, and the creation time of the oldest."""
    result = await conn.execute(
        select(func.count(), func.min(webhook_deliveries.c.created_at)).where(
            webhook_deliveries.c.status == PENDING
        )
    )
    count, oldest = result.one()
    return int(count), (int(oldest) if oldest is not None else None)


# The API and the CLI ---------------------------------------------------------------------------
def _owner(caller: str | None) -> Any:
    column = webhook_deliveries.c.caller
    return column.is_(None) if caller is None else column == caller


def encode_cursor(created_at: int, delivery_id: str) -> str:
    return cursors.encode(created_at, delivery_id)


_ID = r"msg_[0-9a-f]{32}"


def is_delivery_id(value: str) -> bool:
    """What add_events makes; anything else is no delivery (and never reaches a query)."""
    return re.fullmatch(_ID, value) is not None


def decode_cursor(cursor: str) -> tuple[int, str] | None:
    """The position in a deliveries cursor (a delivery id), or None."""
    return cursors.decode(cursor, _ID)


async def list_deliveries(
    conn: AsyncConnection,
    caller: str | None,
    *,
    limit: int,
    status: str | None = None,
    cursor: tuple[int, str] | None = None,
) -> tuple[list[dict[str, Any]], str | None]:
    """A caller's deliveries (None: the `*` endpoint's), newest first."""
    query = select(webhook_deliveries).where(_owner(caller))
    if status:
        query = query.where(webhook_deliveries.c.status == status)
    if cursor is not None:
        created, delivery_id = cursor
        query = query.where(
            or_(
                webhook_deliveries.c.created_at < created,
                and_(
                    webhook_deliveries.c.created_at == created,
                    webhook_deliveries.c.id < delivery_id,
                ),
            )
        )
    query = query.order_by(
        webhook_deliveries.c.created_at.desc(), webhook_deliveries.c.id.desc()
    ).limit(limit + 1)
    rows = [dict(r._mapping) for r in await conn.execute(query)]
    next_cursor = None
    if len(rows) > limit:
        rows = rows[:limit]
        next_cursor = encode_cursor(rows[-1]["created_at"], rows[-1]["id"])
    return rows, next_cursor


async def retry(
    conn: AsyncConnection, caller: str | None, delivery_id: str, now: int
) -> dict[str, Any] | None:
    """Re-queue a failed delivery of `caller` (None: a `*` one). Returns the row as it
    was (None: no such delivery of this caller); only a `failed` one changes."""
    row = (
        await conn.execute(
            select(webhook_deliveries).where(webhook_deliveries.c.id == delivery_id, _owner(caller))
        )
    ).first()
    if row is None:
        return None
    if row.status == FAILED:
        await conn.execute(
            update(webhook_deliveries)
            .where(webhook_deliveries.c.id == delivery_id, webhook_deliveries.c.status == FAILED)
            .values(status=PENDING, next_attempt_at=now, claimed_until=None, updated_at=now)
        )
    return dict(row._mapping)
