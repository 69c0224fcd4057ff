"""Typed dependencies: every route receives its context through these aliases.

The service's long-lived objects are built once by the lifespan, which yields them as its
state (`LifespanState`); the server hands each request a copy of that state, read here
through `request.state` — never through `app.state`. Tests replace any of these through
`app.dependency_overrides`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any, TypedDict

from fastapi import Depends, Header, Request
from fastapi.security import HTTPAuthorizationCredentials
from pydantic import AfterValidator, BeforeValidator

from app.auth import Authenticator, api_key_scheme, bearer_scheme
from app.config import Settings
from app.media import Preflight
from app.pacing import Pacer
from app.plivo.sender import Sender
from app.ratelimit import Limits
from app.store.db import Database
from app.store.outbox import PendingCounts

if TYPE_CHECKING:  # only for the annotations: the metrics and the reconciler import no route
    from app.metrics import Metrics
    from app.outbox import Outbox
    from app.reconcile import Reconciler
    from app.webhooks.delivery import WebhookDelivery


@dataclass(slots=True)
class Services:
    """What the routes work with, built once in the lifespan."""

    settings: Settings
    auth: Authenticator
    metrics: Metrics
    limits: Limits
    db: Database
    sender: Sender
    reconciler: Reconciler
    webhooks: WebhookDelivery | None = None  # None: WEBHOOKS is empty
    pacer: Pacer | None = None  # None: SEND_RATE=0, pacing off
    preflight: Preflight | None = None  # None: MEDIA_PREFLIGHT off
    outbox: Outbox | None = None  # sends the scheduled messages (woken by a due one)
    # Each key's scheduled messages, for OUTBOX_MAX_PENDING_PER_KEY without a count per send.
    pending_counts: PendingCounts = field(default_factory=PendingCounts)
    draining: bool = False  # set on SIGTERM and at shutdown: /ready answers 503
    draining_since: float | None = None  # monotonic time of SIGTERM


class LifespanState(TypedDict):
    services: Services


async def get_services(request: Request) -> Services:
    services: Services = request.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


async def get_caller(
    request: Request,
    services: ServicesDep,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
    api_key: Annotated[str | None, Depends(api_key_scheme)],
) -> str:
    """The API key's name (401 without a valid key); `anonymous` when auth is off.

    An `Authorization` header decides on its own: one that is not a Bearer token is
    refused, never completed by an `X-API-Key` sent along with it.
    """
    if bearer is not None:
        presented: str | None = bearer.credentials
    elif "authorization" in request.headers:
        presented = None
    else:
        presented = api_key
    name = services.auth.caller(presented)
    request.scope["state"]["caller"] = name  # for the request's log line
    return name


CallerDep = Annotated[str, Depends(get_caller)]

IdempotencyKeyDep = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=255,
        pattern=r"^[ -~]+$",  # printable ASCII
        description="1-255 printable ASCII characters. A repeat with the same key and body "
        "replays the stored response (`Idempotent-Replayed: true`) without a second send; "
        "kept 24 h per API key.",
    ),
]


# Times in queries (`?since=`) --------------------------------------------------------------
_ISO_DATE_FIRST = re.compile(r"\d{4}-\d{2}-\d{2}(?:[Tt ]|$)")


def _iso_8601_text(value: Any) -> Any:
    """A time in a query is ISO 8601 text. pydantic's datetime would also read a number
    (`1700000000`, `1e-307`) as Unix time, which the API does not offer and its OpenAPI
    `format: date-time` does not allow."""
    if not isinstance(value, str) or _ISO_DATE_FIRST.match(value) is None:
        raise ValueError("must be an ISO 8601 date-time, e.g. 2026-12-01T00:00:00Z")
    return value


def _utc_if_naive(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


# An ISO 8601 date-time; one without an offset is UTC.
IsoDateTime = Annotated[datetime, BeforeValidator(_iso_8601_text), AfterValidator(_utc_if_naive)]
