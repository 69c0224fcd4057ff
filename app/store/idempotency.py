"""Idempotency-Key (IETF draft, Stripe's semantics): a retried call never becomes a second MMS.

Keys are scoped per caller name and kept 24 h in the store, so they survive restarts and
are shared by replicas. Exclusivity comes from the database — an INSERT that conflicts —
never from an in-process lock. What is stored: Plivo accepted (2xx), rejected for
good (400/422), or the outcome is unknown; everything else releases the key.

A keyed send also records its message row (status `unknown`) when the key is taken, so a
crash mid-send leaves something for reconciliation to resolve. A key still in flight once
its lease (deadline + shutdown grace + margin) has passed was orphaned by a crash: it
becomes a stored unknown outcome, replayed as 504 `upstream_timeout`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from app.errors import PROBLEM_MEDIA_TYPE, UpstreamTimeout, problem_body
from app.store.repository import insert_ignore, now_ms
from app.store.tables import idempotency_keys, messages

KEEP_MS = 24 * 3600 * 1000
SLOT_AND_MARGIN_SECONDS = 5.0
TAKE_ATTEMPTS = 3


def fingerprint(request: dict[str, Any]) -> str:
    """Same validated request, same fingerprint — whatever the JSON's key order or spacing."""
    return hashlib.sha256(orjson.dumps(request, option=orjson.OPT_SORT_KEYS)).hexdigest()


def kept_until(created_at: int, keep_until: int | None) -> int:
    """Until when a record replays: 24 h, or a scheduled send's sendAt + 24 h."""
    return keep_until if keep_until is not None else created_at + KEEP_MS


def lease_ms(timeout_seconds: float, grace_seconds: float) -> int:
    return int((timeout_seconds + grace_seconds + SLOT_AND_MARGIN_SECONDS) * 1000)


@dataclass(frozen=True)
class Claim:
    """What taking a key found: `new` (go ahead), `replay`, `mismatch` or `in_flight`."""

    kind: str
    status: int = 0
    body: bytes = b""
    headers: dict[str, str] | None = None


async def stored_replay(
    conn: AsyncConnection, caller: str, key: str, fingerprint: str
) -> Claim | None:
    """A read-only peek: the stored response of this key for this same request, if any.

    Checks that come before the key is taken (the opt-out list) must not refuse a retry
    of a send that already succeeded. Anything else (no record, a different request, one
    in flight, an expired one) is None: taking the key decides those."""
    held = (
        await conn.execute(
            select(idempotency_keys).where(
                idempotency_keys.c.caller == caller, idempotency_keys.c.key == key
            )
        )
    ).first()
    if (
        held is None
        or held.state != "done"
        or held.fingerprint != fingerprint
        or kept_until(held.created_at, held.keep_until) < now_ms()
    ):
        return None
    return Claim("replay", held.status_code, held.body.encode(), orjson.loads(held.headers))


@dataclass
class TakeKey:
    """Write op: take (caller, key) for this request, or report what holds it."""

    caller: str
    key: str
    fingerprint: str
    lease_ms: int
    message_row: dict[str, Any]  # inserted (status unknown) when the key is taken
    # An accepted asynchronous send: its response (status, body, headers JSON) is stored
    # with the key at once, and its row is inserted as given (`scheduled`).
    response: tuple[int, str, str] | None = None
    keep_until: int | None = None

    async def run(self, conn: AsyncConnection) -> Claim:
        now = now_ms()
        for _ in range(TAKE_ATTEMPTS):
            claim = await self._take(conn, now)
            if claim is not None:
                return claim
        # Taken and released by others under our feet every time: as good as in flight.
        return Claim("in_flight")

    async def _take(self, conn: AsyncConnection, now: int) -> Claim | None:
        """One attempt; None when the key vanished between our INSERT and SELECT (another
        replica released it after a send that is not stored): the caller tries again."""
        taken = await conn.execute(
            insert_ignore(conn, idempotency_keys)
            .values(
                caller=self.caller,
                key=self.key,
                fingerprint=self.fingerprint,
                message_id=self.message_row["id"],
                created_at=now,
                lease_until=now + self.lease_ms,
                **self._state(),
            )
            .returning(idempotency_keys.c.key)
        )
        if taken.first() is None:
            held = await self._select(conn)
            if held is None:
                return None
            if kept_until(held.created_at, held.keep_until) >= now:
                return await self._held(conn, held, now)
            # Older than 24 h: the key is free again — for one taker only. The condition on
            # the old creation time makes a concurrent replica's identical UPDATE (which
            # waits for our row lock, then re-checks) match nothing.
            retaken = await conn.execute(
                update(idempotency_keys)
                .where(
                    idempotency_keys.c.caller == self.caller,
                    idempotency_keys.c.key == self.key,
                    idempotency_keys.c.created_at == held.created_at,
                )
                .values(
                    fingerprint=self.fingerprint,
                    message_id=self.message_row["id"],
                    created_at=now,
                    lease_until=now + self.lease_ms,
                    **self._state(),
                )
                .returning(idempotency_keys.c.key)
            )
            if retaken.first() is None:
                held = await self._select(conn)
                return None if held is None else await self._held(conn, held, now)
        if self.response is not None:  # a scheduled send: the outbox takes it from here
            await conn.execute(messages.insert().values(**self.message_row))
            return Claim("new")
        # The message row waits for its outcome; reconciliation looks at it only once the
        # lease has passed (a crash), never while the send is in flight.
        await conn.execute(
            messages.insert().values(**{**self.message_row, "next_check_at": now + self.lease_ms})
        )
        return Claim("new")

    def _state(self) -> dict[str, Any]:
        if self.response is None:
            return {
                "state": "in_flight",
                "status_code": None,
                "body": None,
                "headers": None,
                "keep_until": None,
            }
        status, body, headers = self.response
        return {
            "state": "done",
            "status_code": status,
            "body": body,
            "headers": headers,
            "keep_until": self.keep_until,
        }

    async def _select(self, conn: AsyncConnection) -> Any:
        query = select(idempotency_keys).where(
            idempotency_keys.c.caller == self.caller, idempotency_keys.c.key == self.key
        )
        return (await conn.execute(query)).first()

    async def _held(self, conn: AsyncConnection, held: Any, now: int) -> Claim:
        if held.fingerprint != self.fingerprint:
            return Claim("mismatch")
        if held.state == "done":
            return Claim("replay", held.status_code, held.body.encode(), orjson.loads(held.headers))
        if held.lease_until > now:
            return Claim("in_flight")
        # Orphaned by a crash: the send may or may not have reached Plivo.
        request_id = (
            await conn.execute(
                select(messages.c.request_id).where(messages.c.id == held.message_id)
            )
        ).scalar() or "-"
        error = UpstreamTimeout("The send was interrupted; its outcome is unknown.")
        body = orjson.dumps(problem_body(error, request_id)).decode()
        headers = {"content-type": PROBLEM_MEDIA_TYPE}
        await conn.execute(
            update(idempotency_keys)
            .where(idempotency_keys.c.caller == self.caller, idempotency_keys.c.key == self.key)
            .values(
                state="done",
                status_code=error.status,
                body=body,
                headers=orjson.dumps(headers).decode(),
            )
        )
        return Claim("replay", error.status, body.encode(), headers)


@dataclass
class ReleaseKey:
    """Write op: the outcome is not stored; the same key may be retried."""

    caller: str
    key: str
    message_id: str

    async def run(self, conn: AsyncConnection) -> None:
        await conn.execute(
            delete(idempotency_keys).where(
                idempotency_keys.c.caller == self.caller,
                idempotency_keys.c.key == self.key,
                idempotency_keys.c.message_id == self.message_id,
            )
        )
        await conn.execute(delete(messages).where(messages.c.id == self.message_id))
