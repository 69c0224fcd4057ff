"""Delivery reports: one function that every path uses — Plivo's callbacks, the sandbox's
simulated deliveries and reconciliation lookups — so they all obey the same rules."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable

from app.logging import get_logger
from app.store.db import Database, StoreUnavailable
from app.store.repository import OPTOUT_SOURCE_ERROR_200, IngestEvent

log = get_logger("app.callbacks")


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
    to_number: str | None = None,
    on_optout: Callable[[str], None] | None = None,
) -> bool:
    """Store the event and move the message's status forward. False when any of the
    request's nonces was seen before (a replay): then nothing changes. All of them are
    recorded in the same transaction."""
    if source == "callback" and db.records_pending:
        # Records of accepted sends wait in memory for the store: take nothing new until
        # they are written (503; Plivo retries its callbacks).
        raise StoreUnavailable("records of accepted sends are waiting for the store")
    op = IngestEvent(
        message_uuid=message_uuid,
        status=status.strip().lower(),
        error_code=(error_code or None) if error_code not in ("000", "0") else None,
        sequence=_sequence(sequence),
        source=source,
        plivo_time=plivo_time,
        nonces=tuple(dict.fromkeys(nonce_key(n) for n in nonces)),
        to_number=to_number,
        targets=db.webhooks,
    )
    fresh: bool = await db.write(op)
    if op.listed:
        log.info("optout_listed", source=OPTOUT_SOURCE_ERROR_200, message_uuid=message_uuid)
        if on_optout is not None:
            on_optout(OPTOUT_SOURCE_ERROR_200)
    return fresh
