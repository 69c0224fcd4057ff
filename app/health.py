"""Liveness and readiness probes: cheap, no API key, never rate-limited."""

from __future__ import annotations

import orjson
from fastapi import APIRouter, Request
from pydantic import BaseModel, Field
from starlette.responses import Response

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


class Readiness(BaseModel):
    status: str = Field(examples=["ready"])
    degraded: list[str] = Field(
        examples=[["rate_limit_storage"]],
        description="What is impaired but does not stop this replica: `rate_limit_storage` "
        "(Redis down: limits and pacing count in this process), `circuit_open` (Plivo failing)",
    )


@router.get(
    "/ready",
    response_model=Readiness,
    summary="Readiness: 503 only when this replica cannot do its job",
    responses=errors.problem_responses(errors.NotReady, errors.InternalError),
)
async def ready(request: Request) -> Response:
    """503 when the store is unreachable or cannot be written (the last write failed, a
    send's record waits in memory, the SQLite file is gone) or while draining; else 200,
    naming what is degraded.

    A shared dependency's hiccup (Redis, Plivo) is reported in `degraded` with a 200, so a
    load balancer does not drain every replica at once.
    """
    state = request.app.state
    degraded = []
    if state.limit_store.degraded:
        degraded.append("rate_limit_storage")
    if state.sender.breaker.is_open:
        degraded.append("circuit_open")
    if state.draining:
        problem = "This replica is shutting down (draining)."
    elif not state.db.writable:
        problem = "The message store cannot be written; new sends are refused."
    elif not await state.db.ping():
        problem = "The message store is unreachable."
    else:
        body = {"status": "ready", "degraded": degraded}
        return Response(orjson.dumps(body), media_type="application/json")
    error = errors.NotReady(problem)
    content = {**errors.problem_body(error, errors.request_id_of(request)), "degraded": degraded}
    return Response(orjson.dumps(content), status_code=503, media_type=errors.PROBLEM_MEDIA_TYPE)
