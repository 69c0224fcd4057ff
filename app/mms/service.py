"""Sending and looking up MMS: no FastAPI objects here, only the steps."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import orjson

from app.config import Settings
from app.errors import (
    PROBLEM_MEDIA_TYPE,
    AppError,
    IdempotencyInProgress,
    IdempotencyKeyReused,
    RecipientOptedOut,
    ServiceUnavailable,
    UpstreamError,
    problem_body,
)
from app.ids import random_id
from app.logging import get_logger
from app.media import Preflight
from app.mms.schemas import EventOut, MessageOut, SendRequest, SendResponse
from app.pacing import Pacer
from app.paths import CALLBACK_PATH
from app.plivo.client import Accepted, OutboundMms
from app.plivo.sender import Sender
from app.ratelimit import Limits
from app.reconcile import first_check_at
from app.status import MessageStatus
from app.store import optouts
from app.store.db import Database, RecordPending, StoreUnavailable
from app.store.idempotency import ReleaseKey, TakeKey, fingerprint, lease_ms, stored_replay
from app.store.repository import (
    ERROR_MESSAGES,
    RecordMessage,
    idempotency_completion,
    iso_utc,
    now_ms,
)

log = get_logger("app.mms")


def callback_url(settings: Settings) -> str | None:
    """Ask Plivo for status callbacks only when the service is reachable from outside."""
    return f"{settings.public_base_url}{CALLBACK_PATH}" if settings.public_base_url else None


def message_row(
    request: SendRequest,
    *,
    message_id: str,
    caller: str,
    request_id: str,
    settings: Settings,
    status: MessageStatus,
    accepted: Accepted | None = None,
    idempotency_key: str | None = None,
) -> dict[str, Any]:
    created = now_ms()
    return {
        "id": message_id,
        "caller": caller,
        "message_uuid": accepted.message_uuids[0] if accepted else None,
        "api_id": accepted.api_id if accepted else None,
        "to_number": request.to,
        "from_number": settings.sender_number,
        "media_count": len(request.media_urls),
        "text": request.text if settings.store_message_text else None,
        "status": status,
        "status_rank": status.rank,
        "error_code": None,
        "idempotency_key": idempotency_key,
        "request_id": request_id,
        "created_at": created,
        "updated_at": created,
        "next_check_at": None if status.is_final else first_check_at(created, settings),
        "checks": 0,
        "claimed_until": None,
    }


@dataclass(frozen=True)
class SendResult:
    """The response to give: fresh, or replayed from an Idempotency-Key record."""

    status: int
    body: bytes
    headers: dict[str, str]
    replayed: bool = False
    message_uuid: str | None = None


async def send_mms(
    request: SendRequest,
    *,
    caller: str,
    request_id: str,
    idempotency_key: str | None,
    sender: Sender,
    limits: Limits,
    db: Database,
    settings: Settings,
    pacer: Pacer | None = None,
    preflight: Preflight | None = None,
) -> SendResult:
    """Check the media, take the Idempotency-Key, check the limits that count only real
    sends, wait for the pacing slot, call Plivo, record the outcome (and the key's stored
    response) before answering."""
    refuse_if_store_failing(db)
    row = functools.partial(
        message_row,
        request,
        message_id=random_id(),  # the row's key: callers never see it
        caller=caller,
        request_id=request_id,
        settings=settings,
        idempotency_key=idempotency_key,
    )
    if idempotency_key is not None:
        # A retry of a stored send is answered the same, even if the recipient opted out
        # or the media is gone since: the replay comes before those checks.
        async with db.read() as conn:
            held = await stored_replay(
                conn, caller, idempotency_key, fingerprint(request.model_dump())
            )
        if held is not None:
            return SendResult(held.status, held.body, dict(held.headers or {}), replayed=True)
    await refuse_if_opted_out(db, request.to)
    if preflight is not None:  # a refusal here, like the opt-out's, takes no key, counts nothing
        await preflight.check(request.media_urls, deadline=settings.plivo_timeout_seconds)
    if idempotency_key is not None:
        replay = await _take_key(
            db, caller, idempotency_key, request, row(status=MessageStatus.UNKNOWN), settings
        )
        if replay is not None:
            return replay
    mms = OutboundMms(
        src=settings.sender_number,
        dst=request.to,
        text=request.text,
        media_urls=request.media_urls,
        callback_url=callback_url(settings),
    )
    try:
        # Breaker -> limits tested -> pacing slot -> concurrency slot -> limits counted
        # -> Plivo: a refusal before the count costs no limit and no quota.
        sender.check_breaker()  # an open breaker answers at once and counts against no limit
        await limits.test_send(destination=request.to, caller=caller)
        if pacer is not None:  # SEND_RATE=0: off
            await pacer.take(settings.pacing_max_wait_seconds)
        count_send = functools.partial(limits.count_send, destination=request.to, caller=caller)
        accepted = await sender.send(mms, before_send=count_send)
    except Exception as exc:
        error = exc if isinstance(exc, AppError) else unexpected_send_failure(exc)
        outcome = error.outcome
        if outcome is not None:  # Plivo may have it (unknown) or refused it for good
            problem = orjson.dumps(problem_body(error, request_id))
            stored = (error.status, problem, {**error.headers, "content-type": PROBLEM_MEDIA_TYPE})
            await _record(db, row(status=outcome), caller, idempotency_key, stored)
        elif idempotency_key is not None:  # not stored: the same key may be retried
            await _release(db, caller, idempotency_key, row(status=MessageStatus.UNKNOWN)["id"])
        if error is exc:
            raise
        raise error from None
    response = SendResponse(
        message=accepted.message, messageUuid=accepted.message_uuids, apiId=accepted.api_id
    )
    body = orjson.dumps(response.model_dump())
    # Recorded before the response: a caller that got 200 can always look it up.
    await _record(
        db,
        row(status=MessageStatus.QUEUED, accepted=accepted),
        caller,
        idempotency_key,
        (200, body, {"content-type": JSON}),
    )
    return SendResult(200, body, {}, message_uuid=accepted.message_uuids[0])


JSON = "application/json"
STORE_RETRY_AFTER_SECONDS = 5


def refuse_if_store_failing(db: Database) -> None:
    """No money is spent on a message that cannot be recorded: while the last store write
    failed, or a send's record still waits in memory, a new send is refused before Plivo
    (and before its Idempotency-Key is taken: the refusal is not stored)."""
    if not db.writable:
        raise ServiceUnavailable(
            "The message store cannot be written; nothing was sent. Retry shortly.",
            headers={"Retry-After": str(STORE_RETRY_AFTER_SECONDS)},
        )


async def refuse_if_opted_out(db: Database, number: str) -> None:
    """A listed recipient is refused before the Idempotency-Key, the limits and Plivo
    (nothing stored, nothing counted). One primary-key lookup in the shared store (no
    cache), so a STOP received by any replica refuses the next send on every replica."""
    if await optouts.is_listed(db, number):
        raise RecipientOptedOut(
            "The recipient has opted out (replied STOP); nothing was sent. Only the "
            "recipient can opt back in (START)."
        )


def unexpected_send_failure(exc: Exception) -> AppError:
    """A bug or an unforeseen error during a send: Plivo may have the message, so it is an
    unknown outcome like a dropped connection (502, stored, reconciled), never a 500."""
    log.error("send_failed_unexpectedly", exc_info=exc)
    return UpstreamError("The send failed unexpectedly; the message may or may not be queued.")


async def _take_key(
    db: Database,
    caller: str,
    key: str,
    request: SendRequest,
    message: dict[str, Any],
    settings: Settings,
) -> SendResult | None:
    claim = await db.write(
        TakeKey(
            caller=caller,
            key=key,
            fingerprint=fingerprint(request.model_dump()),
            # The send's longest life: its pacing wait, then the deadline (then the grace).
            lease_ms=lease_ms(
                settings.pacing_max_wait_seconds + settings.plivo_timeout_seconds,
                settings.shutdown_grace_seconds,
            ),
            message_row=message,
        )
    )
    if claim.kind == "mismatch":
        raise IdempotencyKeyReused(
            "This Idempotency-Key was used with a different request; use a new key."
        )
    if claim.kind == "in_flight":
        raise IdempotencyInProgress(
            "A request with this Idempotency-Key is still in progress; retry shortly.",
            headers={"Retry-After": "1"},
        )
    if claim.kind == "replay":
        return SendResult(claim.status, claim.body, dict(claim.headers or {}), replayed=True)
    return None


async def _release(db: Database, caller: str, key: str, message_id: str) -> None:
    try:
        await db.write(ReleaseKey(caller, key, message_id))
    except StoreUnavailable:  # the key stays in flight; its lease turns it into `unknown`
        log.error("idempotency_release_failed", message_id=message_id)


async def _record(
    db: Database,
    row: dict[str, Any],
    caller: str,
    key: str | None,
    response: tuple[int, bytes, dict[str, str]],
) -> None:
    status, body, headers = response
    completion = (
        idempotency_completion(
            caller, key, status, body.decode(), orjson.dumps(headers).decode(), row["id"]
        )
        if key is not None
        else None
    )
    op = RecordMessage(
        row,
        idempotency=completion,
        existing=key is not None,
        targets=db.webhooks,
    )
    try:
        # A keyed send's row was inserted when the key was taken: it is updated. Kept in
        # memory if the store fails now: Plivo has the message, so the record must not be
        # lost, and answering an error would invite a second send.
        await db.write(op, keep=True)
    except RecordPending:
        log.error("record_pending", message_id=row["id"], message_uuid=row["message_uuid"])
    except StoreUnavailable:
        log.error("record_failed", message_id=row["id"], message_uuid=row["message_uuid"])


def message_out(row: dict[str, Any]) -> MessageOut:
    events = row.get("events")
    return MessageOut(
        id=row["id"],
        messageUuid=row["message_uuid"],
        to=row["to_number"],
        status=row["status"],
        errorCode=row["error_code"],
        errorMessage=ERROR_MESSAGES.get(row["error_code"] or "") if row["error_code"] else None,
        mediaCount=row["media_count"],
        idempotencyKey=row["idempotency_key"],
        createdAt=iso_utc(row["created_at"]),
        updatedAt=iso_utc(row["updated_at"]),
        events=None
        if events is None
        else [
            EventOut(status=e["status"], errorCode=e["error_code"], at=iso_utc(e["received_at"]))
            for e in events
        ],
    )
