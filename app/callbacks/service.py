"""Delivery reports: one function that every path uses — Plivo's callbacks, the sandbox's
simulated deliveries and reconciliation lookups — so they all obey the same rules."""

from __future__ import annotations

from app.store.db import Database, StoreUnavailable
from app.store.repository import IngestEvent


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
    nonce: str | None = None,
    plivo_time: str | None = None,
) -> bool:
    """Store the event and move the message's status forward. False for a replayed nonce."""
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
            nonce=nonce,
        )
    )
    return fresh
