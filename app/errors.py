"""One error tree, one envelope: RFC 9457 problem+json for everything the service answers."""

from __future__ import annotations

from typing import Any, ClassVar

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.routing import Match, Route

from app.status import MessageStatus

PROBLEM_MEDIA_TYPE = "application/problem+json"


class _Unset:
    """No outcome given: the class's own applies."""


class FieldError(BaseModel):
    field: str = Field(examples=["to"])
    message: str = Field(examples=["must be a valid US or Canadian mobile number in E.164"])


class Problem(BaseModel):
    """RFC 9457 problem details, plus a stable `code` that callers branch on."""

    type: str = Field(examples=["urn:mms-gateway:problem:validation_error"])
    title: str = Field(examples=["Request validation failed"])
    status: int = Field(examples=[422])
    detail: str = Field(examples=["The request body is invalid."])
    code: str = Field(examples=["validation_error"])
    requestId: str = Field(examples=["5f0c6f3e9b7d4f0c8a4f2f7d1c2b3a4d"])
    errors: list[FieldError] | None = None
    plivoApiId: str | None = None


class AppError(Exception):
    """Base of every error the service answers on purpose.

    Each subclass carries its HTTP status, its stable `code` and `title`, and what it means
    for a send:

    - `outcome`: what a send that failed this way leaves behind. None: Plivo certainly does
      not have the message, nothing is stored and an Idempotency-Key is released (the same
      key may be retried). `unknown`: Plivo may have it; the message row and the response
      are stored (a retry with the key replays them) and reconciliation finds out.
      `rejected`: Plivo refused it for good; stored likewise. An instance may override its
      class's outcome (`outcome=`) where one error code covers both cases.
    - `retryable`: the same request may succeed later, unchanged (a transient refusal that
      stored nothing). The sender retries, within the send's deadline, exactly those of
      Plivo's answers that map to a retryable error.
    """

    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"
    title: ClassVar[str] = "Internal server error"
    outcome: MessageStatus | None = None
    retryable: ClassVar[bool] = False

    def __init__(
        self,
        detail: str | None = None,
        *,
        headers: dict[str, str] | None = None,
        plivo_api_id: str | None = None,
        errors: list[dict[str, str]] | None = None,
        outcome: MessageStatus | type[_Unset] | None = _Unset,
    ) -> None:
        super().__init__(detail or self.title)
        self.detail = detail or self.title
        self.headers = headers or {}
        self.plivo_api_id = plivo_api_id
        self.errors = errors
        if outcome is not _Unset:
            self.outcome = outcome  # type: ignore[assignment]


# The caller's request --------------------------------------------------------------------
class ValidationFailed(AppError):
    status = 422
    code = "validation_error"
    title = "Request validation failed"


class PayloadTooLarge(AppError):
    status = 413
    code = "payload_too_large"
    title = "Request body too large"


class Unauthorized(AppError):
    status = 401
    code = "unauthorized"
    title = "Missing or invalid credentials"


class InvalidSignature(AppError):
    status = 403
    code = "invalid_signature"
    title = "Missing or invalid Plivo signature"


class NotFound(AppError):
    status = 404
    code = "not_found"
    title = "Not found"


class MethodNotAllowed(AppError):
    status = 405
    code = "method_not_allowed"
    title = "Method not allowed"


class RecipientOptedOut(AppError):
    """The recipient is on the opt-out list: refused before Plivo, counting nothing."""

    status = 422
    code = "recipient_opted_out"
    title = "The recipient has opted out"


class IdempotencyKeyReused(AppError):
    status = 422
    code = "idempotency_key_reused"
    title = "Idempotency-Key reused with a different request"


class IdempotencyInProgress(AppError):
    status = 409
    code = "idempotency_in_progress"
    title = "A request with this Idempotency-Key is in progress"
    retryable = True


class DeliveryNotFailed(AppError):
    """A webhook delivery is re-queued only once it has `failed`."""

    status = 409
    code = "delivery_not_failed"
    title = "Only a failed webhook delivery can be retried"


class MediaRejected(AppError):
    """A media URL failed preflight (unreachable, wrong type, too large...): refused before
    Plivo, nothing stored, nothing counted. `errors` has one entry per failing URL."""

    status = 422
    code = "media_rejected"
    title = "Media cannot be sent"


# Limits ----------------------------------------------------------------------------------
class RateLimited(AppError):
    status = 429
    code = "rate_limited"
    title = "Too many requests from this client"
    retryable = True


class DestinationRateLimited(AppError):
    status = 429
    code = "destination_rate_limited"
    title = "Too many messages to this destination"
    retryable = True


class QuotaExceeded(AppError):
    status = 429
    code = "quota_exceeded"
    title = "Daily quota of this API key used up"
    retryable = True


class OutboxFull(AppError):
    """The caller already has OUTBOX_MAX_PENDING_PER_KEY scheduled messages waiting."""

    status = 429
    code = "outbox_full"
    title = "Too many scheduled messages for this API key"
    retryable = True


class NotCancelable(AppError):
    """DELETE of a message that is being sent, or has any status but `scheduled`."""

    status = 409
    code = "not_cancelable"
    title = "The message can no longer be canceled"


# Plivo's answer (or silence) -------------------------------------------------------------
class PlivoRejected(AppError):
    status = 400
    code = "plivo_rejected"
    title = "Plivo rejected the message"
    outcome = MessageStatus.REJECTED


class UpstreamAuthFailed(AppError):
    status = 502
    code = "upstream_auth_failed"
    title = "Plivo refused our credentials"


class UpstreamError(AppError):
    """Plivo's answer was an error or could not be read: it may have queued the message
    (unless the instance says otherwise, e.g. a 4xx that certainly took nothing)."""

    status = 502
    code = "upstream_error"
    title = "Plivo failed to answer properly"
    outcome = MessageStatus.UNKNOWN


class UpstreamRateLimited(AppError):
    status = 503
    code = "upstream_rate_limited"
    title = "Plivo is rate-limiting us"
    retryable = True


class UpstreamUnavailable(AppError):
    status = 503
    code = "upstream_unavailable"
    title = "Plivo is unavailable"
    retryable = True


class UpstreamTimeout(AppError):
    status = 504
    code = "upstream_timeout"
    title = "Plivo did not answer in time"
    outcome = MessageStatus.UNKNOWN


# The service itself ----------------------------------------------------------------------
class InternalError(AppError):
    status = 500
    code = "internal_error"
    title = "Internal server error"


class ServiceUnavailable(AppError):
    status = 503
    code = "service_unavailable"
    title = "A dependency of the service failed"
    retryable = True


class SendRateExceeded(AppError):
    """No pacing slot within PACING_MAX_WAIT_SECONDS (`Retry-After`: seconds until one)."""

    status = 503
    code = "send_rate_exceeded"
    title = "Sends toward Plivo are at the configured rate"
    retryable = True


class NotReady(AppError):
    status = 503
    code = "not_ready"
    title = "This replica is not ready"
    retryable = True


# What POST /api/mms/send can answer (its OpenAPI responses and its metric's label values).
SEND_ERRORS: tuple[type[AppError], ...] = (
    ValidationFailed,
    PayloadTooLarge,
    Unauthorized,
    RateLimited,
    DestinationRateLimited,
    QuotaExceeded,
    OutboxFull,
    IdempotencyKeyReused,
    IdempotencyInProgress,
    RecipientOptedOut,
    MediaRejected,
    PlivoRejected,
    UpstreamAuthFailed,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamUnavailable,
    UpstreamTimeout,
    SendRateExceeded,
    ServiceUnavailable,
    InternalError,
)


def invalid(location: tuple[str, ...], message: str) -> RequestValidationError:
    """A 422 `validation_error` for one field that the models did not check themselves."""
    return RequestValidationError(
        [{"type": "value_error", "loc": location, "msg": message, "input": None}]
    )


def problem_body(
    error: AppError | type[AppError], request_id: str, detail: str | None = None
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": f"urn:mms-gateway:problem:{error.code}",
        "title": error.title,
        "status": error.status,
        "detail": detail or getattr(error, "detail", None) or error.title,
        "code": error.code,
        "requestId": request_id,
    }
    if isinstance(error, AppError):
        if error.errors is not None:
            body["errors"] = error.errors
        if error.plivo_api_id:
            body["plivoApiId"] = error.plivo_api_id
    return body


def problem_response(error: AppError, request_id: str) -> Response:
    return Response(
        content=orjson.dumps(problem_body(error, request_id)),
        status_code=error.status,
        media_type=PROBLEM_MEDIA_TYPE,
        headers=error.headers,
    )


def request_id_of(request: Request) -> str:
    return str(request.scope.get("state", {}).get("request_id", "-"))


# Handlers ----------------------------------------------------------------------------------
def _field_name(error: dict[str, Any]) -> str:
    if error["type"] == "json_invalid":
        return "body"
    parts = [str(p) for p in error["loc"]]
    if parts and parts[0] in ("body", "header", "query", "path"):
        parts = parts[1:] if len(parts) > 1 else parts
    return ".".join(parts)


def _friendly(error: dict[str, Any]) -> str:
    if error["type"] == "extra_forbidden":
        return "unknown field"
    if error["type"] == "json_invalid":
        return "body is not valid JSON"
    return str(error["msg"]).removeprefix("Value error, ")


async def _on_app_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, AppError)
    return problem_response(exc, request_id_of(request))


async def _on_validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = [{"field": _field_name(e), "message": _friendly(e)} for e in exc.errors()]
    error = ValidationFailed("The request is invalid; see `errors`.", errors=errors)
    return problem_response(error, request_id_of(request))


async def _on_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    error: AppError
    if exc.status_code == 404:
        error = NotFound("No such resource.")
    elif exc.status_code == 405:
        error = MethodNotAllowed("This method is not allowed on this resource.")
    elif exc.status_code == 413:
        error = PayloadTooLarge(str(exc.detail))
    elif exc.status_code == 400:  # Starlette's body-parsing failures
        error = ValidationFailed("The request body could not be read.", errors=[])
    else:
        # No other HTTPException is raised on purpose: a bug, answered like any other
        # unexpected exception by the one 500 path (app/middleware.py).
        raise exc
    error.headers.update(exc.headers or {})
    if exc.status_code == 405:
        error.headers["Allow"] = _allowed_methods(request)
    return problem_response(error, request_id_of(request))


def _allowed_methods(request: Request) -> str:
    """Every method served at the path template that matched (as Starlette chose it), with
    one route per method. Starlette's own `Allow` names only the first route's methods."""
    routes = [r for r in request.app.router.routes if isinstance(r, Route) and r.methods]
    matched = next((r for r in routes if r.matches(request.scope)[0] is not Match.NONE), None)
    if matched is None:
        return ""
    methods = set().union(*(r.methods or () for r in routes if r.path == matched.path))
    return ", ".join(sorted(methods))


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(AppError, _on_app_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)


def problem_responses(*errors: type[AppError]) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for these errors (grouped by status), all with the Problem model."""
    by_status: dict[int, list[type[AppError]]] = {}
    for error in errors:
        by_status.setdefault(error.status, []).append(error)
    responses: dict[int | str, dict[str, Any]] = {}
    for status, group in sorted(by_status.items()):
        examples = {
            e.code: {"summary": e.title, "value": problem_body(e, "5f0c6f3e9b7d4f0c")}
            for e in group
        }
        responses[status] = {
            "model": Problem,
            "description": "; ".join(f"`{e.code}`: {e.title}" for e in group),
            "content": {PROBLEM_MEDIA_TYPE: {"examples": examples}},
        }
    return responses


def move_problems_to_problem_json(schema: dict[str, Any]) -> dict[str, Any]:
    """FastAPI files `model=` under application/json; our errors are application/problem+json."""
    for path in schema.get("paths", {}).values():
        for operation in path.values():
            for status, response in operation.get("responses", {}).items():
                content = response.get("content", {})
                if str(status)[0] in "45" and "application/json" in content:
                    moved = content.pop("application/json")
                    content.setdefault(PROBLEM_MEDIA_TYPE, {}).update(moved)
                problem = content.get(PROBLEM_MEDIA_TYPE, {})
                if problem.get("schema", {}).get("$ref", "").endswith("/HTTPValidationError"):
                    # FastAPI's default 422 for path/query parameters: ours is a Problem too.
                    problem["schema"] = {"$ref": "#/components/schemas/Problem"}
                    response["description"] = "`validation_error`: Request validation failed"
    schemas = schema.get("components", {}).get("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    return schema
