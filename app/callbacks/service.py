"""Delivery reports: one function that every path uses — Plivo's callbacks, the sandbox's
simulated deliveries and reconciliation lookups — so they all obey the same rules."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from app.store.db import Database, StoreUnavailable
from app.store.repository import IngestEvent


def nonce_key(nonce: str) -> str:
    """What is stored for a nonce: its SHA-256 (fixed length, whatever Plivo sends)."""
    return hashlib.sha256(nonce.encode("utf-8", "surrogatepass")).hexdigest()


def _sequence(value: str | None) -> int:
    try:
        return int(value) if value else -1
    except ValueError:
        return -1


async def record_status(
    db: Database,
    *,
    message_uuid: str,
    status: str,
    error_code: str | None = None,
    sequence: str | None = None,
    source: str = "callback",
    nonces: Iterable[str] = (),
    plivo_time: str | None = None,
) -> bool:
    """Store the event and move the message's status forward. False when any of the
    request's nonces was seen before (a replay): then nothing changes. All of them are
    recorded in the same transaction."""
    if source == "callback" and db.records_pending:
        # Records of accepted sends wait in memory for the store: take nothing new until
        # they are written (503; Plivo retries its callbacks).
        raise StoreUnavailable("records of accepted sends are waiting for the store")
    fresh: bool = await db.write(
        IngestEvent(
            message_uuid=message_uuid,
            status=status.strip().lower(),
            error_code=(error_code or None) if error_code not in ("000", "0") else None,
            sequence=_sequence(sequence),
            source=source,
            plivo_time=plivo_time,
            nonces=tuple(dict.fromkeys(nonce_key(n) for n in nonces)),
        )
    )
    return fresh
