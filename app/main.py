"""The application factory. `app.main:app` is built on first access, from the environment."""

from __future__ import annotations

import asyncio
import copy
import functools
import gc
import signal
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from types import FrameType
from typing import Any

from fastapi import FastAPI, Request
from fastapi.routing import APIRoute, request_response
from sqlalchemy.exc import DBAPIError
from starlette.responses import Response
from starlette.routing import BaseRoute

from app import __version__, errors, health, openapi
from app.auth import Authenticator
from app.callbacks.router import router as callbacks_router
from app.callbacks.service import record_status
from app.config import ConfigError, Settings, load_settings
from app.deps import LifespanState, Services
from app.docs import install_docs
from app.inbound.router import router as inbound_router
from app.logging import configure_logging, get_logger
from app.media import Preflight
from app.metrics import Metrics, multiprocess_dir
from app.middleware import BodyLimitMiddleware, RequestContextMiddleware
from app.mms.router import router as mms_router
from app.optouts.router import router as optouts_router
from app.outbox import Outbox
from app.pacing import Pacer
from app.plivo.breaker import CircuitBreaker
from app.plivo.client import AiohttpPlivoClient, PlivoClient
from app.plivo.sandbox import SandboxPlivoClient
from app.plivo.sender import Sender
from app.ratelimit import ClientRateLimitMiddleware, Limits, LimitStore
from app.reconcile import LOOKUP_TIMEOUT_SECONDS, Reconciler
from app.retention import retention_loop
from app.store.db import Database, StoreUnavailable
from app.webhooks.delivery import ATTEMPT_TIMEOUT_SECONDS, WebhookDelivery
from app.webhooks.events import targets_for
from app.webhooks.router import router as webhooks_router

log = get_logger("app.main")


def _plivo_client(settings: Settings) -> PlivoClient:
    if settings.sandbox:
        return SandboxPlivoClient()
    return AiohttpPlivoClient(
        api_url=settings.plivo_api_url,
        auth_id=settings.plivo_auth_id or "",
        auth_token=settings.auth_token,
        max_connections=settings.plivo_max_concurrency,
    )


GC_THRESHOLDS = (20_000, 50, 50)  # Python's default is (700, 10, 10)


def tune_gc() -> None:
    """Fewer, cheaper garbage collections on the hot path.

    A send allocates thousands of short-lived objects, so with the default thresholds the
    collector ran every few requests and walked the whole heap (FastAPI, SQLAlchemy and
    pydantic make it large) at every full collection. Freezing what startup built takes
    it out of every later collection. Measured in process (50 concurrent sends, loop
    thread CPU, median of 5): 1,279 -> 996 µs per send.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def _drain_on_sigterm(services: Services) -> None:
    """Turn /ready to 503 the moment SIGTERM arrives, then let uvicorn's handler run.

    uvicorn installs its handlers before the lifespan starts and restores its predecessors
    afterwards, so chaining here works for `python -m app` and plain `uvicorn` alike.
    """
    previous = signal.getsignal(signal.SIGTERM)
    if not callable(previous):
        return

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        services.draining = True  # the outbox claims nothing more from here
        services.draining_since = time.monotonic()
        log.warning("draining", reason="SIGTERM")
        previous(signum, frame)

    signal.signal(signal.SIGTERM, on_sigterm)


@dataclass(frozen=True, slots=True)
class _Built:
    """What create_app builds before the lifespan (the middleware needs the limits)."""

    settings: Settings
    auth: Authenticator
    metrics: Metrics
    limits: Limits


@asynccontextmanager
async def _lifespan(app: FastAPI, built: _Built) -> AsyncIterator[LifespanState]:
    """Start what the routes need and yield it as the lifespan state (each request gets
    it as `request.state`); stop it all at shutdown."""
    settings, metrics = built.settings, built.metrics
    db = Database(
        settings.database_url, on_batch=metrics.store_batch, on_health=metrics.store_health
    )
    await db.start()  # migrations under a lock, then the group-commit writer
    client = _plivo_client(settings)
    if isinstance(client, SandboxPlivoClient):
        client.deliver = functools.partial(record_status, db, source="sandbox")
    sender = Sender(
        client,
        timeout_seconds=settings.plivo_timeout_seconds,
        max_concurrency=settings.plivo_max_concurrency,
        breaker=CircuitBreaker(
            threshold=settings.circuit_failure_threshold,
            reset_seconds=settings.circuit_reset_seconds,
            on_change=metrics.circuit_changed,
        ),
        on_attempt=metrics.plivo_attempt,
        on_in_flight=metrics.set_plivo_in_flight,
    )
    pacer = Pacer.build(
        settings.send_rate_per_second,
        workers=settings.web_concurrency,
        store=built.limits.store,
        on_wait=metrics.pacing_waited,
        on_refuse=metrics.pacing_refused,
    )
    preflight = None
    if settings.media_preflight_enabled:
        preflight = await Preflight(
            max_bytes=settings.media_max_bytes,
            max_total_bytes=settings.media_max_total_bytes,
            allow_private=settings.media_allow_private,
            allow_hosts=settings.media_allow_hosts,
            on_result=metrics.preflight_result,
            on_cache=metrics.preflight_cache_lookup,
            on_duration=metrics.preflight_took,
        ).start()
    outbox = Outbox(
        db,
        sender=sender,
        limits=built.limits,
        settings=settings,
        auth=built.auth,
        pacer=pacer,
        preflight=preflight,
        on_outcome=metrics.outbox_outcome,
        on_sent=metrics.send_recorded,
        on_backlog=metrics.set_outbox_backlog,
    )
    reconciler = Reconciler(db, client, settings)
    reconciler.on_lookup = metrics.reconcile_lookup
    reconciler.on_backlog = metrics.set_reconcile_backlog
    webhooks = None
    if settings.webhooks:
        webhooks = WebhookDelivery(db, settings)
        webhooks.on_attempt = metrics.webhook_attempt
        webhooks.on_backlog = metrics.set_webhook_backlog
        metrics.webhook_endpoints([endpoint.name for endpoint in settings.webhooks])
        # Every write that causes an event inserts it; the local worker wakes at once.
        db.webhooks = targets_for(settings, on_event=webhooks.wake)
    services = Services(
        settings=settings,
        auth=built.auth,
        metrics=metrics,
        limits=built.limits,
        db=db,
        sender=sender,
        reconciler=reconciler,
        webhooks=webhooks,
        pacer=pacer,
        preflight=preflight,
        outbox=outbox,
    )
    outbox.draining = lambda: services.draining
    reconciler.start()
    outbox.start()
    if webhooks is not None:
        webhooks.start()
    stopping = asyncio.Event()
    retention = asyncio.create_task(retention_loop(db, settings.retention_days, stopping))
    _drain_on_sigterm(services)
    tune_gc()
    if settings.sandbox:
        log.warning(
            "SANDBOX MODE: no Plivo credentials, nothing is sent to Plivo; "
            "set PLIVO_AUTH_ID and PLIVO_AUTH_TOKEN to send for real"
        )
    if not built.auth.enabled:
        log.warning("API_KEYS is empty: authentication is off (development only)")
    for warning in settings.startup_warnings():  # risky settings: docs/security.md
        log.warning(warning)
    if settings.is_production and "send_rate" not in settings.model_fields_set:
        log.warning(
            "SEND_RATE is the default (50/second): set it to the Plivo account's MMS "
            "throughput, or Plivo queues what it cannot send and expires it after 3 hours"
        )
    log.info("started", mode=client.mode, env=settings.app_env, store=db.dialect)
    try:
        yield {"services": services}
    finally:
        # uvicorn has already let in-flight requests finish (SHUTDOWN_GRACE_SECONDS).
        services.draining = True
        stopping.set()
        # In-flight outbox sends finish within what is left of SHUTDOWN_GRACE_SECONDS
        # (they kept running while uvicorn drained the requests).
        since = services.draining_since
        spent = time.monotonic() - since if since is not None else 0.0
        await outbox.stop(grace_seconds=max(0.0, settings.shutdown_grace_seconds - spent))
        await reconciler.stop(grace_seconds=LOOKUP_TIMEOUT_SECONDS)
        if webhooks is not None:  # attempts in flight finish (10 s at most) or are retried
            await webhooks.stop(
                grace_seconds=min(settings.shutdown_grace_seconds, ATTEMPT_TIMEOUT_SECONDS)
            )
        await retention
        await client.aclose()  # the sandbox lets its simulated deliveries finish
        if pacer is not None:
            await pacer.aclose()
        if preflight is not None:
            await preflight.aclose()
        await db.close()  # the writer commits what is queued
        metrics.process_exiting()
        log.info("stopped")


async def _on_store_unavailable(request: Request, exc: Exception) -> Response:
    """The store failed (a write, or a read's database error): 503, never a 500."""
    error = errors.ServiceUnavailable("The message store is unavailable; retry shortly.")
    error.headers["Retry-After"] = "5"
    request.scope["state"]["code"] = error.code
    return errors.problem_response(error, errors.request_id_of(request))


def _bound_to(app: FastAPI, route: BaseRoute) -> BaseRoute:
    """This app's copy of a module router's route: its handler looks up dependency
    overrides in `app.dependency_overrides` (as include_router() would arrange), and the
    router's route stays untouched for the next app built in this process."""
    if not isinstance(route, APIRoute):
        return route
    bound = copy.copy(route)
    bound.dependency_overrides_provider = app
    bound.app = request_response(bound.get_route_handler())  # as APIRoute.__init__ does
    return bound


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or load_settings()
    configure_logging(
        level=settings.log_level, fmt=settings.effective_log_format, secrets=settings.secrets()
    )
    docs = settings.effective_docs_enabled
    auth = Authenticator(settings.api_keys)
    metrics = Metrics(multiprocess_dir())
    limits = Limits(
        LimitStore(
            settings.rate_limit_storage_url,
            on_fallback=metrics.storage_fallback,
            on_recovered=metrics.storage_recovered,
        ),
        per_ip=settings.rate_limit,
        per_destination=settings.rate_limit_per_destination,
        daily_quota=settings.daily_quota_per_key,
        on_reject=metrics.rate_limit_rejected,
    )
    built = _Built(settings=settings, auth=auth, metrics=metrics, limits=limits)
    app = FastAPI(
        title="mms-gateway",
        version=__version__,
        description="Send MMS (pictures, audio, video with text) to US and Canadian phones "
        "through Plivo. Errors are RFC 9457 problem+json with a stable `code`.",
        lifespan=functools.partial(_lifespan, built=built),
        docs_url=None,  # our own /docs (app/docs.py): FastAPI's loads Swagger UI from a CDN
        redoc_url=None,
        openapi_url="/openapi.json" if docs else None,
        # FastAPI's OpenTelemetry hooks: off, the service has its own metrics and logs
        # (when on and unconfigured they still cost a provider lookup per request).
        telemetry={"tracing": False, "metrics": False, "logs": False},
        redirect_slashes=False,  # a redirect would echo the Host header: plain 404 instead
    )
    errors.install_error_handlers(app)
    app.add_exception_handler(StoreUnavailable, _on_store_unavailable)
    app.add_exception_handler(DBAPIError, _on_store_unavailable)
    # Callbacks first: for a method not allowed on /api/mms/status, Starlette's 405 names
    # the first route whose path matches — it must be POST /status, not GET /{messageUuid}.
    for router in (
        callbacks_router,
        inbound_router,
        mms_router,
        optouts_router,
        webhooks_router,
        health.router,
    ):
        # The routes themselves, not include_router(): FastAPI 0.165 keeps an included
        # router as a nested matcher, and walking it cost ~60 µs per request here.
        app.router.routes.extend(_bound_to(app, route) for route in router.routes)
    if docs:
        install_docs(app)
    # Outermost last: request id and log line around everything, then the per-IP limit
    # (which counts every request to the send route), then the body limit.
    app.add_middleware(BodyLimitMiddleware)
    app.add_middleware(ClientRateLimitMiddleware, limits=limits)
    app.add_middleware(RequestContextMiddleware, observe=metrics.observe_request)
    app.openapi = functools.partial(openapi.schema_of, app)  # type: ignore[method-assign]
    return app


@functools.cache
def _app_from_environment() -> FastAPI:
    try:
        return create_app()
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def __getattr__(name: str) -> Any:
    # `uvicorn app.main:app` reads this attribute; tests call create_app(settings) instead.
    if name == "app":
        return _app_from_environment()
    raise AttributeError(name)
