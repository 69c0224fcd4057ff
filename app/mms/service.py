"""Sending and looking up MMS: no FastAPI objects here, only the steps."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from app import quiet_hours
from app.config import Settings
from app.errors import (
    PROBLEM_MEDIA_TYPE,
    AppError,
    IdempotencyInProgress,
    IdempotencyKeyReused,
    NotCancelable,
    NotFound,
    OutboxFull,
    RecipientOptedOut,
    ServiceUnavailable,
    UpstreamError,
    invalid,
    problem_body,
)
from app.ids import random_id
from app.logging import get_logger
from app.media import Preflight
from app.mms.schemas import EventOut, MessageOut, SendRequest, SendResponse
from app.pacing import Pacer
from app.paths import CALLBACK_PATH, MMS_PATH
from app.plivo.client import Accepted, OutboundMms
from app.plivo.sender import Sender
from app.ratelimit import Limits
from app.reconcile import first_check_at
from app.status import MessageStatus
from app.store import optouts
from app.store import outbox as outbox_store
from app.store.db import Database, FunctionOp, RecordPending, StoreUnavailable
from app.store.idempotency import (
    KEEP_MS,
    Claim,
    ReleaseKey,
    TakeKey,
    fingerprint,
    lease_ms,
    stored_replay,
)
from app.store.repository import (
    ERROR_MESSAGES,
    RecordMessage,
    get_message,
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
        "caller": caller,
        "to_number": request.to,
        "from_number": settings.sender_number,
        "media_count": len(request.media_urls),
        "error_code": None,
        "idempotency_key": idempotency_key,
        "request_id": request_id,
        "created_at": created,
        "checks": 0,
        "claimed_until": None,
        **outcome_fields(
            message_id,
            status=status,
            accepted=accepted,
            text=request.text,
            settings=settings,
            attempt_started=created,
        ),
    }


def outcome_fields(
    message_id: str,
    *,
    status: MessageStatus,
    accepted: Accepted | None,
    text: str | None,
    settings: Settings,
    attempt_started: int,
) -> dict[str, Any]:
    """What a send's outcome writes on its message, sync or outbox alike: Plivo's ids,
    the status, the text only with STORE_MESSAGE_TEXT, and the first reconciliation
    lookup, counted from the attempt's start."""
    return {
        "id": message_id,
        "message_uuid": accepted.message_uuids[0] if accepted else None,
        "api_id": accepted.api_id if accepted else None,
        "text": text if settings.store_message_text else None,
        "status": status,
        "status_rank": status.rank,
        "updated_at": now_ms(),
        "next_check_at": None if status.is_final else first_check_at(attempt_started, settings),
    }


@dataclass(frozen=True)
class SendResult:
    """The response to give: fresh, or replayed from an Idempotency-Key record."""

    status: int
    body: bytes
    headers: dict[str, str]
    replayed: bool = False
    message_uuid: str | None = None
    message_id: str | None = None


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
            held = await stored_replay(conn, caller, idempotency_key, request_fingerprint(request))
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
        accepted = await send_to_plivo(sender, mms, before_send=count_send)
    except Exception as exc:
        error = exc if isinstance(exc, AppError) else unexpected_send_failure(exc)
        outcome = error.outcome
        if outcome is not None:  # Plivo may have it (unknown) or refused it for good
            problem = orjson.dumps(problem_body(error, request_id))
            stored = (error.status, problem, {**error.headers, "content-type": PROBLEM_MEDIA_TYPE})
            await record_outcome(db, row(status=outcome), caller, idempotency_key, stored)
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
    await record_outcome(
        db,
        row(status=MessageStatus.QUEUED, accepted=accepted),
        caller,
        idempotency_key,
        (200, body, {"content-type": JSON}),
    )
    return SendResult(200, body, {}, message_uuid=accepted.message_uuids[0])


JSON = "application/json"
STORE_RETRY_AFTER_SECONDS = 5
PAST_TOLERANCE_MS = 60_000  # a send_at up to 60 s in the past means "now"
MAX_AHEAD_MS = 30 * 86_400_000  # at most 30 days ahead


def request_fingerprint(request: SendRequest) -> str:
    """The Idempotency fingerprint: the validated request, its defaults left out (so a
    request without the scheduling fields fingerprints as it always did)."""
    return fingerprint(request.model_dump(exclude_defaults=True))


def prefers_async(prefer_headers: list[str]) -> bool:
    """`respond-async` anywhere in the Prefer header(s) (RFC 7240): tokens are separated
    by commas, parameters follow a semicolon, names are case-insensitive."""
    return any(
        token.split(";", 1)[0].split("=", 1)[0].strip().lower() == "respond-async"
        for header in prefer_headers
        for token in header.split(",")
    )


def due_time(request: SendRequest, *, now: int, settings: Settings) -> int:
    """The sendAt of an asynchronous send (epoch ms): the later of `send_at` (or now) and,
    with quiet hours, the next moment inside the recipient's window. 422 naming the field
    for a time out of range or a window that never opens within 30 days."""
    due = now
    if request.send_at is not None:
        wanted = int(datetime.fromisoformat(request.send_at).timestamp() * 1000)
        if wanted < now - PAST_TOLERANCE_MS:
            raise invalid(("body", "send_at"), "is more than 60 seconds in the past")
        if wanted > now + MAX_AHEAD_MS:
            raise invalid(("body", "send_at"), "is more than 30 days ahead")
        due = max(wanted, now)
    if request.quiet_hours:
        moment = quiet_hours.send_time(
            request.to, settings.quiet_window, datetime.fromtimestamp(due / 1000, UTC)
        )
        if moment is None:
            raise invalid(
                ("body", "quiet_hours"),
                f"the recipient's local window {settings.quiet_hours} holds in no moment "
                "of the next 30 days",
            )
        due = max(due, int(moment.timestamp() * 1000))
    return due


async def schedule_mms(
    request: SendRequest,
    *,
    caller: str,
    request_id: str,
    idempotency_key: str | None,
    limits: Limits,
    db: Database,
    settings: Settings,
    pending_counts: outbox_store.PendingCounts,
    preflight: Preflight | None = None,
    wake: Callable[[], None] | None = None,
) -> SendResult:
    """Accept an asynchronous send: the checks a caller should learn about at once
    (validation, opt-out, preflight, the outbox's room, the daily quota), then the message
    is recorded as `scheduled` -- durably, before the 202 -- and the outbox sends it."""
    refuse_if_store_failing(db)
    if idempotency_key is not None:
        async with db.read() as conn:
            held = await stored_replay(conn, caller, idempotency_key, request_fingerprint(request))
        if held is not None:
            return SendResult(held.status, held.body, dict(held.headers or {}), replayed=True)
    now = now_ms()
    due = due_time(request, now=now, settings=settings)
    await refuse_if_opted_out(db, request.to)
    if preflight is not None:
        await preflight.check(request.media_urls, deadline=settings.plivo_timeout_seconds)
    cap = settings.outbox_max_pending_per_key
    pending = await pending_counts.count(db, caller, cap)
    if pending >= cap:
        raise OutboxFull(
            f"This API key already has {pending} scheduled messages waiting "
            "(OUTBOX_MAX_PENDING_PER_KEY); retry once some are sent.",
            headers={"Retry-After": "60"},
        )
    # Counted now: the quota caps what a key can schedule. (A replay that races past the
    # peek above is then counted once too: a bounded over-count, never an extra send.)
    await limits.count_quota(caller=caller)
    message_id = random_id()
    row = {
        **message_row(
            request,
            message_id=message_id,
            caller=caller,
            request_id=request_id,
            settings=settings,
            status=MessageStatus.SCHEDULED,
            idempotency_key=idempotency_key,
        ),
        # Kept until the send (the text then only with STORE_MESSAGE_TEXT).
        "text": request.text,
        "media_urls": orjson.dumps(request.media_urls).decode(),
        "next_check_at": None,
        "send_at": due,
        "scheduled_for": due,
        "quiet_hours": request.quiet_hours,
        "created_at": now,
        "updated_at": now,
    }
    body = orjson.dumps(
        {"id": message_id, "status": MessageStatus.SCHEDULED.value, "sendAt": iso_utc(due)}
    )
    headers = {"Location": f"{MMS_PATH}/{message_id}"}
    if idempotency_key is None:
        await db.write(outbox_store.InsertScheduled(row))
    else:
        stored = {**headers, "content-type": JSON}
        claim = await db.write(
            TakeKey(
                caller=caller,
                key=idempotency_key,
                fingerprint=request_fingerprint(request),
                lease_ms=0,
                message_row=row,
                response=(202, body.decode(), orjson.dumps(stored).decode()),
                keep_until=due + KEEP_MS,
            )
        )
        replay = _claim_result(claim)
        if replay is not None:
            return replay
    pending_counts.accepted(caller)
    if wake is not None and due <= now_ms():
        wake()  # due now (a plain respond-async): the outbox sends it at once
    return SendResult(202, body, headers, message_uuid=None, message_id=message_id)


async def cancel_mms(
    db: Database, caller: str, ident: str, *, settings: Settings
) -> dict[str, Any]:
    """DELETE /api/mms/{id}: the message, now `canceled` (or already); 409 once it is
    being sent or has another status; 404 for anything else."""

    async def cancel(conn: Any) -> tuple[str, str | None]:
        return await outbox_store.cancel_by_caller(
            conn,
            caller,
            ident,
            now=now_ms(),
            keep_text=settings.store_message_text,
            targets=db.webhooks,
        )

    end, message_id = (
        await db.write(FunctionOp(cancel)) if 8 <= len(ident) <= 64 else ("not_found", None)
    )
    if end == "not_found" or message_id is None:
        raise NotFound("No message with this id for this API key.")
    if end == "not_cancelable":
        raise NotCancelable(
            "The message is being sent or was already sent; only a scheduled message "
            "that no outbox has taken can be canceled."
        )
    async with db.read() as conn:
        row = await get_message(conn, caller, message_id)
    if row is None:  # purged between the two statements
        raise NotFound("No message with this id for this API key.")
    return row


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
            fingerprint=request_fingerprint(request),
            # The send's longest life: its pacing wait, then the deadline (then the grace).
            lease_ms=lease_ms(
                settings.pacing_max_wait_seconds + settings.plivo_timeout_seconds,
                settings.shutdown_grace_seconds,
            ),
            message_row=message,
        )
    )
    return _claim_result(claim)


def _claim_result(claim: Claim) -> SendResult | None:
    """What taking a key found: None to go ahead, a replay, or the refusal."""
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


async def send_to_plivo(
    sender: Sender, mms: OutboundMms, *, before_send: Callable[[], Awaitable[None]] | None = None
) -> Accepted:
    """The POST through the sender (deadline, cap, breaker, retries when not sent), for a
    synchronous send and the outbox alike; every failure is an AppError whose `outcome`
    says whether Plivo may have the message."""
    try:
        return await sender.send(mms, before_send=before_send)
    except AppError:
        raise
    except Exception as exc:
        raise unexpected_send_failure(exc) from None


async def record_outcome(
    db: Database,
    row: dict[str, Any],
    caller: str | None = None,
    key: str | None = None,
    response: tuple[int, bytes, dict[str, str]] | None = None,
    *,
    existing: bool | None = None,
) -> None:
    """Record a send's outcome on its message (sync or outbox), with an Idempotency-Key's
    stored response when a synchronous send took one. `existing`: the row is already in
    the store (a keyed send's, or the outbox's) and is updated."""
    completion = None
    if key is not None and caller is not None and response is not None:
        status, body, headers = response
        completion = idempotency_completion(
            caller, key, status, body.decode(), orjson.dumps(headers).decode(), row["id"]
        )
    op = RecordMessage(
        row,
        idempotency=completion,
        existing=key is not None if existing is None else existing,
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
        sendAt=_send_at_of(row),
        cancelReason=row.get("cancel_reason"),
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


def _send_at_of(row: dict[str, Any]) -> str | None:
    """When a scheduled message goes (its current due time), or went (the sendAt it was
    given); null for a synchronous send."""
    due = row.get("send_at") or row.get("scheduled_for")
    return iso_utc(due) if due is not None else None
