"""The opt-out list over HTTP: read it, and add to it (an opt-out received on another
channel). Nothing here removes a number: consent must come from the recipient (START)
or an operator (`python -m app optouts remove`)."""

from __future__ import annotations

import functools
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictStr, ValidationError

from app import errors
from app.deps import CallerDep, IsoDateTime, ServicesDep
from app.logging import get_logger
from app.openapi import body_read_by_hand
from app.phone import canonical_problem
from app.store import optouts
from app.store.db import FunctionOp
from app.store.repository import iso_utc, now_ms

router = APIRouter(prefix="/api/optouts", tags=["optouts"])
log = get_logger("app.optouts")


def canonical(value: str) -> str:
    problem = canonical_problem(value)
    if problem:
        raise ValueError(problem)
    return value


Number = Annotated[
    StrictStr,
    AfterValidator(canonical),
    Field(max_length=16, examples=["+14155550100"], description="Canonical E.164"),
]


class OptoutRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    number: Number


class HistoryOut(BaseModel):
    action: str = Field(examples=["optout"], description="optout or optin")
    source: str = Field(examples=["inbound"])
    at: str = Field(examples=["2026-12-01T22:30:00.000Z"])


class OptoutOut(BaseModel):
    number: str = Field(examples=["+14155550100"])
    optedOut: bool
    since: str = Field(examples=["2026-12-01T22:30:00.000Z"], description="Current state since")
    source: str = Field(
        examples=["inbound"], description="inbound, plivo_error_200, api:<key>, cli:<user>"
    )
    history: list[HistoryOut] | None = Field(None, description="Every change (null in listings)")


class OptoutPage(BaseModel):
    items: list[OptoutOut]
    nextCursor: str | None = Field(None, description="Pass as `cursor` for the next page")


def entry_out(row: dict[str, Any]) -> OptoutOut:
    history = row.get("history")
    return OptoutOut(
        number=row["number"],
        optedOut=row["opted_out"],
        since=iso_utc(row["since"]),
        source=row["source"],
        history=None
        if history is None
        else [
            HistoryOut(action=h["action"], source=h["source"], at=iso_utc(h["at"])) for h in history
        ],
    )


ERRORS = (errors.Unauthorized, errors.ServiceUnavailable, errors.InternalError)


@router.get(
    "",
    response_model=OptoutPage,
    summary="List the opted-out numbers, newest first",
    responses=errors.problem_responses(errors.ValidationFailed, *ERRORS),
)
async def list_optouts(
    caller: CallerDep,
    services: ServicesDep,
    since: Annotated[
        IsoDateTime | None, Query(description="ISO 8601; listed at or after (no offset: UTC)")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[str | None, Query(max_length=200, description="From `nextCursor`")] = None,
) -> OptoutPage:
    position = optouts.decode_cursor(cursor) if cursor is not None else None
    if cursor is not None and position is None:
        raise errors.invalid(("query", "cursor"), "not a cursor from this service")
    async with services.db.read() as conn:
        rows, next_cursor = await optouts.list_entries(
            conn,
            limit=limit,
            since_ms=int(since.timestamp() * 1000) if since else None,
            cursor=position,
        )
    return OptoutPage(items=[entry_out(r) for r in rows], nextCursor=next_cursor)


@router.get(
    "/{number}",
    response_model=OptoutOut,
    summary="One number's opt-out state and history",
    responses=errors.problem_responses(errors.ValidationFailed, errors.NotFound, *ERRORS),
)
async def get_optout(
    number: Annotated[Number, Path(description="Canonical E.164, `+` percent-encoded or not")],
    caller: CallerDep,
    services: ServicesDep,
) -> OptoutOut:
    async with services.db.read() as conn:
        row = await optouts.get_entry(conn, number)
    if row is None:
        raise errors.NotFound("This number was never on the opt-out list.")
    return entry_out(row)


async def _read_body(request: Request) -> OptoutRequest:
    content_type = request.headers.get("content-type", "")
    if content_type.split(";")[0].strip().lower() != "application/json":
        raise errors.invalid(("body",), "Content-Type must be application/json")
    try:
        return OptoutRequest.model_validate_json(await request.body())
    except ValidationError as exc:
        raise RequestValidationError(
            [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False)]
        ) from None


@router.post(
    "",
    response_model=OptoutOut,
    summary="Put a number on the opt-out list (idempotent)",
    responses=errors.problem_responses(errors.ValidationFailed, errors.PayloadTooLarge, *ERRORS),
    openapi_extra=body_read_by_hand(OptoutRequest),
)
async def add_optout(request: Request, caller: CallerDep, services: ServicesDep) -> OptoutOut:
    """An opt-out received on another channel. A number already listed changes nothing
    (no new `since`, no history row)."""
    body = await _read_body(request)
    source = f"api:{caller}"
    add = functools.partial(
        optouts.change,
        number=body.number,
        action="optout",
        source=source,
        at=now_ms(),
        targets=services.db.webhooks,
    )
    changed = await services.db.write(FunctionOp(lambda conn: add(conn, reference=caller)))
    if changed:
        services.metrics.optout_changed("optout", source)
        log.info("optout_changed", action="optout", number=body.number, source=source)
    async with services.db.read() as conn:
        row = await optouts.get_entry(conn, body.number)
    if row is None:  # just written: only a store outage in between gets here
        raise errors.ServiceUnavailable("The opt-out list could not be read back; retry.")
    return entry_out(row)
