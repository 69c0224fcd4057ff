"""POST /api/mms/send: authenticate, validate, send, answer."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from pydantic import AfterValidator, ValidationError
from starlette.responses import Response

from app import errors
from app.deps import CallerDep, IdempotencyKeyDep, IsoDateTime, ServicesDep
from app.mms import service
from app.mms.schemas import (
    MessageOut,
    MessagePage,
    ScheduledResponse,
    SendRequest,
    SendResponse,
    printable_ascii,
    us_ca_number,
)
from app.openapi import body_read_by_hand
from app.status import MessageStatus
from app.store import repository

router = APIRouter(prefix="/api/mms", tags=["mms"])


async def read_send_request(request: Request) -> SendRequest:
    """Parse after the dependencies, authentication first (a stranger learns nothing about
    the body), in one pass."""
    content_type = request.headers.get("content-type", "")
    if content_type.split(";")[0].strip().lower() != "application/json":
        raise errors.invalid(("body",), "Content-Type must be application/json")
    try:
        return SendRequest.model_validate_json(await request.body())
    except ValidationError as exc:
        raise RequestValidationError(
            [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False)]
        ) from None


ACCEPTED_RESPONSE: dict[int | str, dict[str, Any]] = {
    202: {
        "model": ScheduledResponse,
        "description": "Accepted for an asynchronous send (`send_at`, `quiet_hours`, or "
        "`Prefer: respond-async`): recorded as `scheduled`, sent by the outbox. "
        "`Location` names the lookup; `Preference-Applied: respond-async` when asked.",
    }
}


@router.post(
    "/send",
    response_model=SendResponse,
    summary="Send an MMS through Plivo (now, later, or asynchronously)",
    responses={**ACCEPTED_RESPONSE, **errors.problem_responses(*errors.SEND_ERRORS)},
    openapi_extra=body_read_by_hand(SendRequest),
)
async def send_mms(
    request: Request,
    caller: CallerDep,
    services: ServicesDep,
    key: IdempotencyKeyDep = None,
    prefer: Annotated[
        str | None,
        Header(
            alias="Prefer",
            description="`respond-async` (RFC 7240): accept now (202), send from the outbox",
        ),
    ] = None,
) -> Response:
    """Queue one MMS with Plivo. A 200 means Plivo queued it, not that it was delivered;
    a 202 means the service accepted it and its outbox will send it at `sendAt`."""
    body = await read_send_request(request)
    state = request.scope["state"]
    state["to"] = body.to  # masked by the log processors
    asked_async = prefer is not None and service.prefers_async(request.headers.getlist("prefer"))
    try:
        if body.is_async or asked_async:
            outbox = services.outbox
            result = await service.schedule_mms(
                body,
                caller=caller,
                request_id=state["request_id"],
                idempotency_key=key,
                limits=services.limits,
                db=services.db,
                settings=services.settings,
                preflight=services.preflight,
                wake=outbox.wake if outbox is not None else None,
                pending_counts=services.pending_counts,
            )
        else:
            result = await service.send_mms(
                body,
                caller=caller,
                request_id=state["request_id"],
                idempotency_key=key,
                sender=services.sender,
                limits=services.limits,
                db=services.db,
                settings=services.settings,
                pacer=services.pacer,
                preflight=services.preflight,
            )
    except errors.AppError as exc:
        state["code"] = exc.code
        if exc.outcome is not None and not (body.is_async or asked_async):
            services.metrics.send_recorded("sync", exc.outcome.value)
        raise
    headers = dict(result.headers)
    if result.status == 200 and not result.replayed:
        services.metrics.send_recorded("sync", "queued")
    if result.status == 202:
        state["code"] = "scheduled"
        if asked_async:
            headers["Preference-Applied"] = "respond-async"
    if result.replayed:
        headers["Idempotent-Replayed"] = "true"
        state["code"] = "idempotent_replay"
    state["message_uuid"] = result.message_uuid
    return Response(
        result.body,
        status_code=result.status,
        headers=headers,
        media_type=headers.pop("content-type", "application/json"),
    )


LOOKUP_ERRORS = (
    errors.Unauthorized,
    errors.NotFound,
    errors.ServiceUnavailable,  # the store cannot be read
    errors.InternalError,
)
# Filters follow the rules of what was stored: a number as a send's `to` (canonical, US/CA),
# a key as the Idempotency-Key header. Anything else -- a NUL or another control character
# included -- is a 422 here rather than a query the store refuses.
ListedNumber = Annotated[str, AfterValidator(us_ca_number)]
ListedIdempotencyKey = Annotated[str, AfterValidator(printable_ascii)]


@router.get(
    "",
    response_model=MessagePage,
    summary="List the caller's messages, newest first",
    responses=errors.problem_responses(errors.ValidationFailed, *LOOKUP_ERRORS),
)
async def list_messages(
    caller: CallerDep,
    services: ServicesDep,
    to: Annotated[
        ListedNumber | None,
        Query(max_length=16, description="Destination, canonical E.164 (as sent)"),
    ] = None,
    status: Annotated[MessageStatus | None, Query()] = None,
    since: Annotated[
        IsoDateTime | None, Query(description="ISO 8601; created at or after (no offset: UTC)")
    ] = None,
    idempotencyKey: Annotated[
        ListedIdempotencyKey | None,
        Query(min_length=1, max_length=255, description="1-255 printable ASCII characters"),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[str | None, Query(max_length=200, description="From `nextCursor`")] = None,
) -> MessagePage:
    """Only messages sent with the caller's own key; paginated by an opaque cursor."""
    position = repository.decode_cursor(cursor) if cursor is not None else None
    if cursor is not None and position is None:  # an empty one too: never a first page again
        raise errors.invalid(("query", "cursor"), "not a cursor from this service")
    async with services.db.read() as conn:
        rows, next_cursor = await repository.list_messages(
            conn,
            caller,
            limit=limit,
            to=to,
            status=status,
            since_ms=int(since.timestamp() * 1000) if since else None,
            idempotency_key=idempotencyKey,
            cursor=position,
        )
    return MessagePage(items=[service.message_out(r) for r in rows], nextCursor=next_cursor)


@router.get(
    "/{messageUuid}",
    response_model=MessageOut,
    summary="What became of one message (by Plivo uuid or the service's id)",
    responses=errors.problem_responses(*LOOKUP_ERRORS),
)
async def get_message(messageUuid: str, caller: CallerDep, services: ServicesDep) -> MessageOut:
    """Another caller's message, an unknown or a malformed id: all 404 `not_found`."""
    async with services.db.read() as conn:
        row = await repository.get_message(conn, caller, messageUuid)
    if row is None:
        raise errors.NotFound("No message with this id for this API key.")
    return service.message_out(row)


@router.delete(
    "/{messageUuid}",
    response_model=MessageOut,
    summary="Cancel a scheduled message",
    responses=errors.problem_responses(errors.NotCancelable, *LOOKUP_ERRORS),
)
async def cancel_message(messageUuid: str, caller: CallerDep, services: ServicesDep) -> MessageOut:
    """A `scheduled` message of the caller's own key that no outbox has taken becomes
    `canceled` (`cancelReason: caller`); one already canceled is answered the same; 409
    `not_cancelable` once it is being sent or has any other status."""
    row = await service.cancel_mms(services.db, caller, messageUuid, settings=services.settings)
    return service.message_out(row)
