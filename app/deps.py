"""Typed dependency aliases: every route receives its context through these.

Few and async on purpose: FastAPI runs plain `def` dependencies in the thread pool, and
each dependency costs ~20 µs of solving per request — so the service's long-lived
objects come as one `Services` bundle, and the caller's identity as the other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from app.config import Settings
from app.pacing import Pacer
from app.plivo.sender import Sender
from app.ratelimit import Limits
from app.store.db import Database


@dataclass(frozen=True, slots=True)
class Services:
    """What the routes work with, built once in the lifespan."""

    settings: Settings
    sender: Sender
    limits: Limits
    db: Database
    pacer: Pacer | None = None  # None: SEND_RATE=0, pacing off


async def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


async def get_caller(request: Request) -> str:
    """The API key's name (401 without a valid key); `anonymous` when auth is off."""
    return str(request.app.state.auth.caller(request))


ServicesDep = Annotated[Services, Depends(get_services)]
CallerDep = Annotated[str, Depends(get_caller)]
