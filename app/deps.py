"""Typed dependency aliases: every route receives its context through these."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.config import Settings
from app.plivo.sender import Sender


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_sender(request: Request) -> Sender:
    sender: Sender = request.app.state.sender
    return sender


SettingsDep = Annotated[Settings, Depends(get_settings)]
SenderDep = Annotated[Sender, Depends(get_sender)]
