"""Operations endpoints: liveness and readiness probes, the metrics scrape. No API key,
never rate-limited."""

from __future__ import annotations

import hmac

import orjson
from fastapi import APIRouter, Request
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, Field
from starlette.responses import Response

from app import __version__, errors
from app.deps import ServicesDep

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
async def health(services: ServicesDep) -> Health:
    return Health(status="ok", mode=services.sender.client.mode, version=__version__)


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
async def ready(request: Request, services: ServicesDep) -> Response:
    """503 when the store is unreachable or cannot be written (the last write failed, a
    send's record waits in memory, the SQLite file is gone) or while draining; else 200,
    naming what is degraded.

    A shared dependency's hiccup (Redis, Plivo) is reported in `degraded` with a 200, so a
    load balancer does not drain every replica at once.
    """
    degraded = []
    limit_store = services.limits.store
    if limit_store.degraded or not await limit_store.reachable():
        degraded.append("rate_limit_storage")
    if services.sender.breaker.is_open:
        degraded.append("circuit_open")
    if services.draining:
        problem = "This replica is shutting down (draining)."
    elif not services.db.writable:
        problem = "The message store cannot be written; new sends are refused."
    elif not await services.db.ping():
        problem = "The message store is unreachable."
    else:
        body = {"status": "ready", "degraded": degraded}
        return Response(orjson.dumps(body), media_type="application/json")
    error = errors.NotReady(problem)
    content = {**errors.problem_body(error, errors.request_id_of(request)), "degraded": degraded}
    return Response(orjson.dumps(content), status_code=503, media_type=errors.PROBLEM_MEDIA_TYPE)


def _authorized(request: Request, token: str) -> bool:
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(credentials.strip().encode(), token.encode())


@router.get(
    "/metrics",
    summary="Prometheus metrics (text format)",
    response_class=Response,
    responses={
        200: {
            "description": "Prometheus text exposition format",
            "content": {CONTENT_TYPE_LATEST.split(";")[0]: {"schema": {"type": "string"}}},
        },
        **errors.problem_responses(errors.Unauthorized, errors.InternalError),
    },
)
def metrics(request: Request, services: ServicesDep) -> Response:
    """Not rate-limited, no API key; wants `Authorization: Bearer <METRICS_TOKEN>` when set."""
    # A plain `def`: FastAPI runs it in the thread pool, so reading the multiprocess files
    # and rendering never hold up the event loop. (Not declared as a security scheme: with
    # no METRICS_TOKEN the scrape is open.)
    token = services.settings.metrics_token
    if token is not None and not _authorized(request, token.get_secret_value()):
        raise errors.Unauthorized(
            "A valid METRICS_TOKEN is required as a Bearer token.",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return Response(services.metrics.render(), media_type=CONTENT_TYPE_LATEST)
