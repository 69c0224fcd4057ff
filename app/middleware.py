"""Pure ASGI middleware (no BaseHTTPMiddleware): request id and log line, body limit."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from typing import Any

import structlog
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import InternalError, PayloadTooLarge, problem_response
from app.ids import random_id
from app.logging import get_logger, log_request

MAX_BODY_BYTES = 64 * 1024
_SAFE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
log = get_logger("app.access")

# Called once per request: (scope, route template, status, seconds). The scope carries
# the method, the path and the state (`code` of a refused send).
Observer = Callable[[Scope, str, int, float], None]
# In every request line, so an operator can tell the workers of one replica apart.
# Refreshed in forked children (spawned workers import this module afresh anyway).
_pid = os.getpid()


def _refresh_pid() -> None:
    global _pid
    _pid = os.getpid()


os.register_at_fork(after_in_child=_refresh_pid)


class BodyTooLarge(HTTPException):
    """Raised from `receive` mid-body; FastAPI re-raises HTTPExceptions untouched."""

    def __init__(self) -> None:
        super().__init__(413, f"The body exceeds {MAX_BODY_BYTES} bytes.")


def request_id_from(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            candidate: str = value.decode("latin-1")
            if _SAFE_REQUEST_ID.fullmatch(candidate):
                return candidate
            break
    return random_id()


def route_template(scope: Scope) -> str:
    """The matched route's template (bounded cardinality for logs and metrics)."""
    route = scope.get("route")
    path = getattr(route, "path", None) or scope.get("state", {}).get("route")
    return str(path or "unmatched")


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


class RequestContextMiddleware:
    """Outermost: the request id, one log line and the metrics of every request — also of
    those that fail unexpectedly, which it answers itself (500 `internal_error`, with the
    X-Request-ID header and the request id in the log)."""

    def __init__(self, app: ASGIApp, observe: Observer | None = None) -> None:
        self.app = app
        self.observe = observe

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = request_id_from(scope)
        state: dict[str, Any] = scope.setdefault("state", {})
        state["request_id"] = request_id
        tokens = structlog.contextvars.bind_contextvars(request_id=request_id)
        rid_header = (b"x-request-id", request_id.encode())
        status = 500
        response_started = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status = message["status"]
                response_started = True
                message["headers"] = [*message.get("headers", ()), rid_header]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception as exc:
            log.error("unhandled_exception", exc_info=exc, path=scope["path"])
            if response_started:
                raise
            state["code"] = InternalError.code
            error = InternalError("An unexpected error occurred.")
            await problem_response(error, request_id)(scope, receive, send_with_id)
        finally:
            duration = time.perf_counter() - started
            route = route_template(scope)
            if self.observe is not None:
                self.observe(scope, route, status, duration)
            log_request(
                {
                    "method": scope["method"],
                    "route": route,
                    "status": status,
                    "duration_ms": round(duration * 1000, 2),
                    "caller": state.get("caller"),
                    "to": state.get("to"),
                    "message_uuid": state.get("message_uuid"),
                    "code": state.get("code"),
                    "pid": _pid,
                }
            )
            structlog.contextvars.reset_contextvars(**tokens)


class BodyLimitMiddleware:
    """64 KiB: refused by Content-Length before the body is read, or while it streams in.

    Inside the per-IP limiter, so an oversized request is still counted and still gets its
    X-RateLimit-* headers."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        response_started = False

        async def send_tracked(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        length = _content_length(scope)
        try:
            if length is None or length <= MAX_BODY_BYTES:
                await self.app(scope, _limited(receive), send_tracked)
                return
        except BodyTooLarge:
            if response_started:
                raise
        state = scope.setdefault("state", {})
        state["code"] = PayloadTooLarge.code
        error = PayloadTooLarge(f"The body exceeds {MAX_BODY_BYTES} bytes.")
        await problem_response(error, state.get("request_id", "-"))(scope, receive, send)


def _limited(receive: Receive) -> Receive:
    """Count body bytes as they arrive (chunked bodies have no Content-Length)."""
    seen = 0

    async def receive_limited() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > MAX_BODY_BYTES:
                raise BodyTooLarge()
        return message

    return receive_limited
