"""What the service reads from and writes to the store. Writes are ops for the group-commit
writer; statuses only ever move forward, whichever path (send, callback, lookup) moves them."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    SmallInteger,
    String,
    Text,
    and_,
    bindparam,
    case,
    delete,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from app.logging import get_logger
from app.status import FINAL_RANK, STATUS_RANK
from app.store import cursors, optouts, webhooks
from app.store.db import BatchedOp
from app.store.tables import (
    callback_nonces,
    events,
    idempotency_keys,
    inbound_messages,
    messages,
    webhook_deliveries,
)

log = get_logger("app.store")

# Meaning of Plivo's error codes (https://plivo.com/docs/messaging/troubleshooting/error-codes).
ERROR_MESSAGES = {
    "10": "Invalid message: rejected by the carrier (blank or too long)",
    "20": "Network error: temporary, retry later",
    "30": "Spam detected by the carrier",
    "40": "Invalid source number",
    "50": "Invalid destination number",
    "60": "Loop detected between source and destination",
    "70": "Destination permanently unavailable",
    "80": "Destination temporarily unavailable (handset off or out of coverage)",
    "90": "No route available",
    "100": "Prohibited by carrier",
    "110": "Message too long",
    "120": "MMS too large (text plus media over 5 MB)",
    "200": "Source number blocked by STOP from the destination",
    "201": "US toll-free number to a Canadian destination is blocked",
    "300": "Failed to dispatch message",
    "420": "Message expired in Plivo's queue",
    "450": "Destination country barred (geo permissions)",
    "451": "Geo messages-per-hour threshold exceeded",
    "900": "Insufficient credit",
    "910": "Account disabled",
    "1000": "Unknown error",
}


def now_ms() -> int:
    return int(time.time() * 1000)


def iso_utc(ms: int) -> str:
    """A stored millisecond time as the API shows it: `2026-12-01T21:37:48.144Z`."""
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


def insert_ignore(conn: AsyncConnection, table: Any) -> Any:
    """INSERT … ON CONFLICT DO NOTHING in the connection's dialect."""
    module = postgresql if conn.dialect.name == "postgresql" else sqlite
    return module.insert(table).on_conflict_do_nothing()


async def record_nonces(conn: AsyncConnection, nonces: Sequence[str]) -> bool:
    """Record a request's nonces (hashed); True when every one of them is new."""
    unique = list(dict.fromkeys(nonces))
    result = await conn.execute(
        insert_ignore(conn, callback_nonces).returning(callback_nonces.c.nonce),
        [{"nonce": n, "seen_at": now_ms()} for n in unique],
    )
    return len({row.nonce for row in result}) == len(unique)


# Plivo's error 200: the destination sent STOP, Plivo blocks it. The number joins the list.
ERROR_OPTED_OUT = "200"
OPTOUT_SOURCE_ERROR_200 = "plivo_error_200"


async def _list_blocked(conn: AsyncConnection, ops: Sequence[Any]) -> None:
    """Put the destination of every fresh error-200 event on the opt-out list: the
    message's own `to` when it is known, else the number the report names."""
    blocked = [op for op in ops if op.error_code == ERROR_OPTED_OUT]
    if not blocked:
        return
    query = select(messages.c.message_uuid, messages.c.to_number).where(
        messages.c.message_uuid.in_({op.message_uuid for op in blocked})
    )
    known = {uuid: to for uuid, to in (await conn.execute(query)).all()}
    for op in blocked:
        number = known.get(op.message_uuid) or op.to_number
        if number:
            op.listed = await optouts.change(
                conn,
                number=number,
                action="optout",
                source=OPTOUT_SOURCE_ERROR_200,
                at=op.received_at,
                reference=op.message_uuid,
                targets=op.targets,
            )


# Status changes ------------------------------------------------------------------------------
_advance = (
    update(messages)
    .where(
        messages.c.message_uuid == bindparam("b_uuid"),
        messages.c.status_rank < bindparam("b_rank"),
    )
    .values(
        status=bindparam("b_status"),
        status_rank=bindparam("b_rank"),
        error_code=func.coalesce(bindparam("b_error"), messages.c.error_code),
        updated_at=bindparam("b_at"),
        next_check_at=case(
            (bindparam("b_rank") >= FINAL_RANK, None), else_=messages.c.next_check_at
        ),
    )
)


def _advance_params(uuid: str, status: str, error: str | None, at: int) -> dict[str, Any] | None:
    rank = STATUS_RANK.get(status)
    if rank is None:  # e.g. WhatsApp's "read": kept as an event, no status change
        return None
    return {"b_uuid": uuid, "b_rank": rank, "b_status": status, "b_error": error, "b_at": at}


async def _apply_events(
    conn: AsyncConnection, rows: Sequence[Any], targets: webhooks.Targets = webhooks.NO_TARGETS
) -> None:
    """Apply events in Plivo's Sequence order (then arrival): the first final one wins.
    Every status a message takes on the way is a `message.status` webhook event."""
    params = [
        p
        for r in sorted(rows, key=lambda r: (r.sequence, r.received_at))
        if (p := _advance_params(r.message_uuid, r.status, r.error_code, r.received_at))
    ]
    if not params:
        return
    changed: list[dict[str, Any]] = []
    if targets.active:
        # Locked, then advanced in Python exactly as the statement below advances them.
        locked = await webhooks.lock_messages(conn, uuids=list({p["b_uuid"] for p in params}))
        state = {row["message_uuid"]: row for row in locked if targets.wants(row["caller"])}
        for p in params:
            row = state.get(p["b_uuid"])
            after = row and webhooks.advanced(row, p["b_status"], p["b_error"], p["b_at"])
            if after:
                state[p["b_uuid"]] = after
                changed.append(after)
    await conn.execute(_advance, params)
    if changed:
        await webhooks.add_events(conn, targets, webhooks.status_events(targets, changed))


# Write ops -----------------------------------------------------------------------------------
_rank = bindparam("f_rank", type_=SmallInteger)  # typed: asyncpg cannot infer them in CASE
_finish_message = (
    update(messages)
    .where(messages.c.id == bindparam("f_id"))
    .values(
        message_uuid=func.coalesce(messages.c.message_uuid, bindparam("f_uuid", type_=String)),
        api_id=func.coalesce(messages.c.api_id, bindparam("f_api_id", type_=String)),
        # Never backwards, even here: reconciliation may have moved an outlived key's row.
        status=case(
            (messages.c.status_rank > _rank, messages.c.status),
            else_=bindparam("f_status", type_=String),
        ),
        status_rank=case((messages.c.status_rank > _rank, messages.c.status_rank), else_=_rank),
        updated_at=bindparam("f_at", type_=BigInteger),
        next_check_at=case(
            (messages.c.status_rank >= FINAL_RANK, None),
            else_=bindparam("f_next", type_=BigInteger),
        ),
        # An outbox send leaves the outbox; its text is kept only with STORE_MESSAGE_TEXT.
        send_at=None,
        text=bindparam("f_text", type_=Text),
    )
)


async def _drop_repeated_uuids(conn: AsyncConnection, ops: Sequence[Any]) -> None:
    """A message_uuid Plivo already gave another message cannot be stored twice (it is
    unique), and a failed write would lose the row. The row is kept without it, as an
    unknown outcome: reconciliation then finds Plivo's record by number and time."""
    wanted = {op.row["message_uuid"] for op in ops if op.row.get("message_uuid")}
    if not wanted:
        return
    taken = select(messages.c.message_uuid, messages.c.id).where(
        messages.c.message_uuid.in_(wanted)
    )
    holders: dict[str, str] = {u: i for u, i in (await conn.execute(taken)).all()}
    for op in ops:
        uuid = op.row.get("message_uuid")
        if not uuid:
            continue
        holder = holders.setdefault(uuid, op.row["id"])
        if holder != op.row["id"]:
            log.error("plivo_uuid_repeated", message_id=op.row["id"], message_uuid=uuid)
            op.row = {
                **op.row,
                "message_uuid": None,
                "status": "unknown",
                "status_rank": STATUS_RANK["unknown"],
            }


@dataclass
class RecordMessage(BatchedOp):
    """Record a send's message row (before its response is returned); events that arrived
    before it (early callbacks) are applied in the same transaction.

    `existing`: the row was inserted when the Idempotency-Key was taken; it is updated.
    `idempotency`: the key's stored response, committed together with the message."""

    row: dict[str, Any]
    idempotency: dict[str, Any] | None = None
    existing: bool = False
    targets: webhooks.Targets = webhooks.NO_TARGETS

    @classmethod
    async def run_many(cls, conn: AsyncConnection, ops: Sequence[Any]) -> list[Any]:
        await _drop_repeated_uuids(conn, ops)
        targets: webhooks.Targets = ops[0].targets
        hooked = [op for op in ops if targets.wants(op.row["caller"])]
        before: dict[str, dict[str, Any]] = {}
        if any(op.existing for op in hooked):
            locked = await webhooks.lock_messages(
                conn, ids=[op.row["id"] for op in hooked if op.existing]
            )
            before = {row["id"]: row for row in locked}
        new = [op.row for op in ops if not op.existing]
        if new:
            await conn.execute(messages.insert(), new)
        finished = [
            {
                "f_id": r["id"],
                "f_uuid": r["message_uuid"],
                "f_api_id": r["api_id"],
                "f_status": r["status"],
                "f_rank": r["status_rank"],
                "f_at": r["updated_at"],
                "f_next": r["next_check_at"],
                "f_text": r["text"],
            }
            for r in (op.row for op in ops if op.existing)
        ]
        if finished:
            await conn.execute(_finish_message, finished)
        done = [op.idempotency for op in ops if op.idempotency]
        if done:
            await conn.execute(_complete_idempotency, done)
        if hooked:
            recorded = [_as_recorded(op, before.get(op.row["id"])) for op in hooked]
            rows = [row for row in recorded if row is not None]
            await webhooks.add_events(conn, targets, webhooks.status_events(targets, rows))
        uuids = [op.row["message_uuid"] for op in ops if op.row.get("message_uuid")]
        if uuids:
            early = await conn.execute(select(events).where(events.c.message_uuid.in_(uuids)))
            await _apply_events(conn, early.all(), targets)
        return [None] * len(ops)


def _as_recorded(op: RecordMessage, before: dict[str, Any] | None) -> dict[str, Any] | None:
    """The message as the send's record left it (what `_finish_message` does to a row
    inserted when its Idempotency-Key was taken), or None when it did not change it."""
    row = op.row
    if not op.existing:
        return row
    if before is None:
        return None  # no such row any more: the update changed nothing
    if before["status_rank"] > row["status_rank"]:
        return None  # reconciliation got there first: never backwards
    return {
        **before,
        "message_uuid": before["message_uuid"] or row["message_uuid"],
        "api_id": before["api_id"] or row["api_id"],
        "status": row["status"],
        "status_rank": row["status_rank"],
        "updated_at": row["updated_at"],
    }


@dataclass
class IngestEvent(BatchedOp):
    """A delivery report: store it (unless a nonce of its request was seen) and move the
    status forward.

    Every nonce is recorded; returns False when any of them was already seen, in the store
    or earlier in the same batch (a replay: nothing changes)."""

    message_uuid: str
    status: str
    error_code: str | None
    sequence: int
    source: str
    plivo_time: str | None = None
    nonces: tuple[str, ...] = ()
    received_at: int = field(default_factory=now_ms)
    to_number: str | None = None  # the report's `To` (E.164), used when the message is unknown
    listed: bool = False  # set when this event put its number on the opt-out list
    targets: webhooks.Targets = webhooks.NO_TARGETS

    @classmethod
    async def run_many(cls, conn: AsyncConnection, ops: Sequence[Any]) -> list[Any]:
        fresh = list(ops)
        nonces = [n for op in ops for n in op.nonces]
        if nonces:
            result = await conn.execute(
                insert_ignore(conn, callback_nonces).returning(callback_nonces.c.nonce),
                [{"nonce": n, "seen_at": now_ms()} for n in dict.fromkeys(nonces)],
            )
            new = {row.nonce for row in result}
            fresh, seen_in_batch = [], set()
            for op in ops:  # as if one after the other: each records all of its nonces
                if all(n in new and n not in seen_in_batch for n in op.nonces):
                    fresh.append(op)
                seen_in_batch.update(op.nonces)
        if fresh:
            await conn.execute(
                insert_ignore(conn, events),
                [
                    {
                        "message_uuid": op.message_uuid,
                        "status": op.status,
                        "error_code": op.error_code,
                        "sequence": op.sequence,
                        "source": op.source,
                        "plivo_time": op.plivo_time,
                        "received_at": op.received_at,
                    }
                    for op in fresh
                ],
            )
            await _apply_events(conn, fresh, ops[0].targets)
            await _list_blocked(conn, fresh)
        fresh_ids = {id(op) for op in fresh}
        return [id(op) in fresh_ids for op in ops]


_complete_idempotency = (
    update(idempotency_keys)
    .where(
        idempotency_keys.c.caller == bindparam("i_caller"),
        idempotency_keys.c.key == bindparam("i_key"),
        # Still ours and in flight: a key whose lease expired already replays its stored
        # unknown outcome, and a replay must not change afterwards.
        idempotency_keys.c.message_id == bindparam("i_message_id"),
        idempotency_keys.c.state == "in_flight",
    )
    .values(
        state="done",
        status_code=bindparam("i_status"),
        body=bindparam("i_body"),
        headers=bindparam("i_headers"),
        message_id=bindparam("i_message_id"),
    )
)


def idempotency_completion(
    caller: str, key: str, status: int, body: str, headers: str, message_id: str | None
) -> dict[str, Any]:
    return {
        "i_caller": caller,
        "i_key": key,
        "i_status": status,
        "i_body": body,
        "i_headers": headers,
        "i_message_id": message_id,
    }


# Reads ---------------------------------------------------------------------------------------
def _looks_like_id(value: str) -> bool:
    return 8 <= len(value) <= 64 and all(c.isalnum() or c == "-" for c in value)


async def get_message(conn: AsyncConnection, caller: str, ident: str) -> dict[str, Any] | None:
    """One of the caller's messages by Plivo uuid or service id, with its events."""
    if not _looks_like_id(ident):
        return None
    row = (
        await conn.execute(
            select(messages).where(
                messages.c.caller == caller,
                or_(messages.c.id == ident, messages.c.message_uuid == ident),
            )
        )
    ).first()
    if row is None:
        return None
    message = dict(row._mapping)
    message["events"] = []
    if row.message_uuid:
        result = await conn.execute(
            select(events.c.status, events.c.error_code, events.c.received_at)
            .where(events.c.message_uuid == row.message_uuid)
            .order_by(events.c.received_at, events.c.id)
        )
        message["events"] = [dict(e._mapping) for e in result]
    return message


def encode_cursor(created_at: int, message_id: str) -> str:
    return cursors.encode(created_at, message_id)


def decode_cursor(cursor: str) -> tuple[int, str] | None:
    """The position in a messages cursor (one of the service's ids: app/ids.py), or None."""
    return cursors.decode(cursor, r"[0-9a-f]{32}")


async def list_messages(
    conn: AsyncConnection,
    caller: str,
    *,
    limit: int,
    to: str | None = None,
    status: str | None = None,
    since_ms: int | None = None,
    idempotency_key: str | None = None,
    cursor: tuple[int, str] | None = None,
) -> tuple[list[dict[str, Any]], str | None]:
    """The caller's messages, newest first; the cursor continues after the last one."""
    query = select(messages).where(messages.c.caller == caller)
    if to:
        query = query.where(messages.c.to_number == to)
    if status:
        query = query.where(messages.c.status == status)
    if since_ms is not None:
        query = query.where(messages.c.created_at >= since_ms)
    if idempotency_key:
        query = query.where(messages.c.idempotency_key == idempotency_key)
    if cursor:
        created, message_id = cursor
        query = query.where(
            or_(
                messages.c.created_at < created,
                and_(messages.c.created_at == created, messages.c.id < message_id),
            )
        )
    query = query.order_by(messages.c.created_at.desc(), messages.c.id.desc()).limit(limit + 1)
    rows = [dict(r._mapping) for r in await conn.execute(query)]
    next_cursor = None
    if len(rows) > limit:
        rows = rows[:limit]
        next_cursor = encode_cursor(rows[-1]["created_at"], rows[-1]["id"])
    for row in rows:
        row["events"] = None
    return rows, next_cursor


# Retention -----------------------------------------------------------------------------------
async def purge(conn: AsyncConnection, *, retention_ms: int, day_ms: int = 86_400_000) -> int:
    """Delete what has outlived its keep time; returns rows deleted."""
    now = now_ms()
    deleted = 0
    for statement in (
        # Never a scheduled message or an unknown outcome (both still have work to do).
        delete(messages).where(
            messages.c.created_at < now - retention_ms,
            messages.c.status_rank > STATUS_RANK["unknown"],
        ),
        delete(events).where(events.c.received_at < now - retention_ms),
        delete(callback_nonces).where(callback_nonces.c.seen_at < now - retention_ms),
        delete(inbound_messages).where(inbound_messages.c.received_at < now - retention_ms),
        delete(idempotency_keys).where(
            func.coalesce(idempotency_keys.c.keep_until, idempotency_keys.c.created_at + day_ms)
            < now
        ),
        delete(webhook_deliveries).where(webhook_deliveries.c.created_at < now - retention_ms),
    ):
        deleted += (await conn.execute(statement)).rowcount or 0
    return deleted
