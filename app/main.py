"""The application factory. `app.main:app` is built on first access, from the environment."""

from __future__ import annotations

import asyncio
import functools
import gc
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import FrameType
from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.utils import get_openapi
from sqlalchemy.exc import DBAPIError
from starlette.responses import Response
from starlette.routing import Match, Route
from starlette.types import Scope

from app import __version__, errors, health
from app.auth import Authenticator
from app.callbacks.router import router as callbacks_router
from app.callbacks.router import status_callback
from app.callbacks.service import record_status
from app.config import ConfigError, Settings, load_settings
from app.deps import Services
from app.docs import install_docs
from app.logging import configure_logging, get_logger
from app.metrics import Metrics, multiprocess_dir
from app.metrics import router as metrics_router
from app.middleware import BodyLimitMiddleware, RequestContextMiddleware
from app.mms.router import router as mms_router
from app.mms.router import send_mms
from app.mms.schemas import SendRequest
from app.pacing import Pacer
from app.paths import CALLBACK_PATH, SEND_PATH
from app.plivo.breaker import CircuitBreaker
from app.plivo.client import AiohttpPlivoClient, PlivoClient
from app.plivo.sandbox import SandboxPlivoClient
from app.plivo.sender import Sender
from app.ratelimit import ClientRateLimitMiddleware, Limits, LimitStore
from app.reconcile import Reconciler
from app.retention import retention_loop
from app.store.db import Database, StoreUnavailable

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


class HotRoute(Route):
    """A plain Starlette route that names itself in the scope, as FastAPI's routes do
    (the access log and the metrics label requests by `scope["route"].path`)."""

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        match, child_scope = super().matches(scope)
        if match is not Match.NONE:
            child_scope["route"] = self
        return match, child_scope


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


def _drain_on_sigterm(app: FastAPI) -> None:
    """Turn /ready to 503 the moment SIGTERM arrives, then let uvicorn's handler run.

    uvicorn installs its handlers before the lifespan starts and restores its predecessors
    afterwards, so chaining here works for `python -m app` and plain `uvicorn` alike.
    """
    previous = signal.getsignal(signal.SIGTERM)
    if not callable(previous):
        return

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        app.state.draining = True
        log.warning("draining", reason="SIGTERM")
        previous(signum, frame)

    signal.signal(signal.SIGTERM, on_sigterm)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    app.state.draining = False
    metrics: Metrics = app.state.metrics
    db = Database(
        settings.database_url, on_batch=metrics.store_batch, on_health=metrics.store_health
    )
    await db.start()  # migrations under a lock, then the group-commit writer
    app.state.db = db
    client = _plivo_client(settings)
    if isinstance(client, SandboxPlivoClient):
        client.deliver = functools.partial(record_status, db, source="sandbox")
    app.state.sender = Sender(
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
    app.state.pacer = pacer = Pacer.build(
        settings.send_rate_per_second,
        workers=settings.web_concurrency,
        store=app.state.limit_store,
        on_wait=metrics.pacing_waited,
        on_refuse=metrics.pacing_refused,
    )
    app.state.services = Services(settings, app.state.sender, app.state.limits, db, pacer)
    reconciler = Reconciler(db, client, settings)
    reconciler.on_lookup = metrics.reconcile_lookup
    reconciler.on_backlog = metrics.set_reconcile_backlog
    app.state.reconciler = reconciler
    reconciler.start()
    stopping = asyncio.Event()
    retention = asyncio.create_task(retention_loop(db, settings.retention_days, stopping))
    _drain_on_sigterm(app)
    tune_gc()
    if settings.sandbox:
        log.warning(
            "SANDBOX MODE: no Plivo credentials, nothing is sent to Plivo; "
            "set PLIVO_AUTH_ID and PLIVO_AUTH_TOKEN to send for real"
        )
    if not app.state.auth.enabled:
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
        yield
    finally:
        # uvicorn has already let in-flight requests finish (SHUTDOWN_GRACE_SECONDS).
        app.state.draining = True
        stopping.set()
        await reconciler.stop()
        await retention
        await client.aclose()  # the sandbox lets its simulated deliveries finish
        if pacer is not None:
            await pacer.aclose()
        await db.close()  # the writer commits what is queued
        metrics.process_exiting()
        log.info("stopped")


async def _on_store_unavailable(request: Request, exc: Exception) -> Response:
    """The store failed (a write, or a read's database error): 503, never a 500."""
    error = errors.ServiceUnavailable("The message store is unavailable; retry shortly.")
    error.headers["Retry-After"] = "5"
    request.scope["state"]["code"] = error.code
    return errors.problem_response(error, errors.request_id_of(request))


def _openapi(app: FastAPI) -> dict[str, Any]:
    if app.openapi_schema is None:
        schema = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        components = schema.setdefault("components", {})
        components.setdefault("schemas", {})["SendRequest"] = SendRequest.model_json_schema(
            ref_template="#/components/schemas/{model}"
        )
        components["securitySchemes"] = {
            "bearer": {"type": "http", "scheme": "bearer"},
            "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
        }
        app.openapi_schema = errors.move_problems_to_problem_json(schema)
    return app.openapi_schema


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or load_settings()
    configure_logging(
        level=settings.log_level, fmt=settings.effective_log_format, secrets=settings.secrets()
    )
    docs = settings.effective_docs_enabled
    app = FastAPI(
        title="mms-gateway",
        version=__version__,
        description="Send MMS (pictures, audio, video with text) to US and Canadian phones "
        "through Plivo. Errors are RFC 9457 problem+json with a stable `code`.",
        lifespan=lifespan,
        docs_url=None,  # our own /docs (app/docs.py): FastAPI's loads Swagger UI from a CDN
        redoc_url=None,
        openapi_url="/openapi.json" if docs else None,
        # FastAPI's OpenTelemetry hooks: off, the service has its own metrics and logs
        # (when on and unconfigured they still cost a provider lookup per request).
        telemetry={"tracing": False, "metrics": False, "logs": False},
        redirect_slashes=False,  # a redirect would echo the Host header: plain 404 instead
    )
    app.state.settings = settings
    app.state.auth = Authenticator(settings.api_keys)
    metrics = app.state.metrics = Metrics(multiprocess_dir())
    app.state.limit_store = LimitStore(
        settings.rate_limit_storage_url,
        on_fallback=metrics.storage_fallback,
        on_recovered=metrics.storage_recovered,
    )
    app.state.limits = Limits(
        app.state.limit_store,
        per_ip=settings.rate_limit,
        per_destination=settings.rate_limit_per_destination,
        daily_quota=settings.daily_quota_per_key,
        on_reject=metrics.rate_limit_rejected,
    )
    errors.install_error_handlers(app)
    app.add_exception_handler(StoreUnavailable, _on_store_unavailable)
    app.add_exception_handler(DBAPIError, _on_store_unavailable)
    # Callbacks first: for a method not allowed on /api/mms/status, Starlette's 405 names
    # the first route whose path matches — it must be POST /status, not GET /{messageUuid}.
    for router in (callbacks_router, mms_router, health.router, metrics_router):
        # The routes themselves, not include_router(): FastAPI 0.165 keeps an included
        # router as a nested matcher, and walking it cost ~60 µs per request here.
        app.router.routes.extend(router.routes)
    # The two hot routes are served by plain Starlette routes placed first, with the same
    # endpoint functions (they parse and answer by hand anyway); their FastAPI routes
    # above stay for the OpenAPI schema. FastAPI's request handling (dependency solving,
    # its handler wrapper) cost 8.5% of a send's instructions (callgrind, in process).
    for path, endpoint in ((SEND_PATH, send_mms), (CALLBACK_PATH, status_callback)):
        app.router.routes.insert(0, HotRoute(path, endpoint, methods=["POST"]))
    if docs:
        install_docs(app)
    # Outermost last: request id and log line around everything, then the per-IP limit
    # (which counts every request to the send route), then the body limit.
    app.add_middleware(BodyLimitMiddleware)
    app.add_middleware(ClientRateLimitMiddleware, limits=app.state.limits)
    app.add_middleware(RequestContextMiddleware, observe=metrics.observe_request)
    app.openapi = functools.partial(_openapi, app)  # type: ignore[method-assign]
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
