"""Typed dependency aliases: every route receives its context through these."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.config import Settings
from app.plivo.sender import Sender
from app.ratelimit import Limits
from app.store.db import Database

# Async on purpose: FastAPI runs plain `def` dependencies in the thread pool.


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_sender(request: Request) -> Sender:
    sender: Sender = request.app.state.sender
    return sender


async def get_limits(request: Request) -> Limits:
    limits: Limits = request.app.state.limits
    return limits


async def get_db(request: Request) -> Database:
    db: Database = request.app.state.db
    return db


async def get_caller(request: Request) -> str:
    """The API key's name (401 without a valid key); `anonymous` when auth is off."""
    return str(request.app.state.auth.caller(request))


SettingsDep = Annotated[Settings, Depends(get_settings)]
SenderDep = Annotated[Sender, Depends(get_sender)]
LimitsDep = Annotated[Limits, Depends(get_limits)]
CallerDep = Annotated[str, Depends(get_caller)]
DatabaseDep = Annotated[Database, Depends(get_db)]
