"""Liveness and readiness probes: cheap, no API key, never rate-limited."""

from __future__ import annotations

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from app import __version__, errors

router = APIRouter(tags=["operations"])


class Health(BaseModel):
    status: str = Field(examples=["ok"])
    mode: str = Field(examples=["live"], description="`live`, or `sandbox` (no Plivo account)")
    version: str = Field(examples=[__version__])


@router.get(
    "/health",
    response_model=Health,
    summary="Liveness (no I/O)",
    responses=errors.problem_responses(errors.InternalError),
)
async def health(request: Request) -> Health:
    return Health(status="ok", mode=request.app.state.sender.client.mode, version=__version__)
