"""The caller's webhook deliveries: list them, and re-queue a failed one. Deliveries to
the `*` endpoint belong to no caller: `python -m app webhooks` manages those."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, Field

from app import errors
from app.deps import CallerDep, ServicesDep
from app.logging import get_logger
from app.store import webhooks as store
from app.store.db import FunctionOp
from app.store.repository import iso_utc, now_ms

router = APIRouter(prefix="/api/webhooks", tags=["webhooks"])
log = get_logger("app.webhooks")
ERRORS = (errors.Unauthorized, errors.ServiceUnavailable, errors.InternalError)


class DeliveryOut(BaseModel):
    id: str = Field(
        examples=["msg_9f1c2b3a4d5e6f708192a3b4c5d6e7f8"],
        description="The `webhook-id` header: the same at every attempt",
    )
    type: str = Field(examples=["message.status"])
    status: str = Field(examples=["pending"], description="pending, delivered or failed")
    attempts: int = Field(examples=[1])
    lastError: str | None = Field(examples=["HTTP 503"], description="The last attempt's failure")
    nextAttemptAt: str | None = Field(
        examples=["2026-12-02T01:05:00.000Z"], description="When it is tried next (pending)"
    )
    createdAt: str = Field(examples=["2026-12-02T01:00:00.000Z"], description="The event's time")


class DeliveryPage(BaseModel):
    items: list[DeliveryOut]
    nextCursor: str | None = Field(None, description="Pass as `cursor` for the next page")


def delivery_out(row: dict[str, Any]) -> DeliveryOut:
    due = row["next_attempt_at"]
    return DeliveryOut(
        id=row["id"],
        type=row["type"],
        status=row["status"],
        attempts=row["attempts"],
        lastError=row["last_error"],
        nextAttemptAt=iso_utc(due) if due is not None and row["status"] == store.PENDING else None,
        createdAt=iso_utc(row["created_at"]),
    )


DeliveryStatus = Annotated[
    str, Query(pattern="^(pending|delivered|failed)$", description="pending, delivered or failed")
]
DeliveryId = Annotated[str, Path(description="The delivery's `id` (any other value: 404)")]


@router.get(
    "/deliveries",
    response_model=DeliveryPage,
    summary="The caller's webhook deliveries, newest first",
    responses=errors.problem_responses(errors.ValidationFailed, *ERRORS),
)
async def list_deliveries(
    caller: CallerDep,
    services: ServicesDep,
    status: DeliveryStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[str | None, Query(max_length=200, description="From `nextCursor`")] = None,
) -> DeliveryPage:
    """Deliveries of the caller's own key's events; paginated by an opaque cursor."""
    position = store.decode_cursor(cursor) if cursor is not None else None
    if cursor is not None and position is None:
        raise errors.invalid(("query", "cursor"), "not a cursor from this service")
    async with services.db.read() as conn:
        rows, next_cursor = await store.list_deliveries(
            conn, caller, limit=limit, status=status, cursor=position
        )
    return DeliveryPage(items=[delivery_out(r) for r in rows], nextCursor=next_cursor)


@router.post(
    "/deliveries/{id}/retry",
    status_code=202,
    response_model=DeliveryOut,
    summary="Re-queue a failed webhook delivery",
    responses=errors.problem_responses(errors.NotFound, errors.DeliveryNotFailed, *ERRORS),
)
async def retry_delivery(id: DeliveryId, caller: CallerDep, services: ServicesDep) -> DeliveryOut:
    """A `failed` delivery is attempted again at once (same `webhook-id`). Another
    caller's or an unknown id: 404; one not `failed`: 409."""
    now = now_ms()
    row = None
    if store.is_delivery_id(id):
        row = await services.db.write(FunctionOp(lambda c: store.retry(c, caller, id, now)))
    if row is None:
        raise errors.NotFound("No webhook delivery with this id for this API key.")
    if row["status"] != store.FAILED:
        raise errors.DeliveryNotFailed(f"This delivery is {row['status']}, not failed.")
    log.info("webhook_requeued", delivery_id=id, by=caller)
    if services.webhooks is not None:
        services.webhooks.wake()
    return delivery_out({**row, "status": store.PENDING, "next_attempt_at": now})
