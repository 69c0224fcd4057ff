"""One error tree, one envelope: RFC 9457 problem+json for everything the service answers."""

from __future__ import annotations

from typing import Any, ClassVar

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from app.logging import get_logger

PROBLEM_MEDIA_TYPE = "application/problem+json"
log = get_logger("app.errors")


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
    """Base of every error the service answers on purpose."""

    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"
    title: ClassVar[str] = "Internal server error"

    def __init__(
        self,
        detail: str | None = None,
        *,
        headers: dict[str, str] | None = None,
        plivo_api_id: str | None = None,
        errors: list[dict[str, str]] | None = None,
    ) -> None:
        super().__init__(detail or self.title)
        self.detail = detail or self.title
        self.headers = headers or {}
        self.plivo_api_id = plivo_api_id
        self.errors = errors


def _error(status: int, code: str, title: str) -> type[AppError]:
    return type(
        "".join(p.capitalize() for p in code.split("_")),
        (AppError,),
        {"status": status, "code": code, "title": title},
    )


ValidationFailed = _error(422, "validation_error", "Request validation failed")
PayloadTooLarge = _error(413, "payload_too_large", "Request body too large")
Unauthorized = _error(401, "unauthorized", "Missing or invalid credentials")
InvalidSignature = _error(403, "invalid_signature", "Missing or invalid Plivo signature")
NotFound = _error(404, "not_found", "Not found")
MethodNotAllowed = _error(405, "method_not_allowed", "Method not allowed")
RateLimited = _error(429, "rate_limited", "Too many requests from this client")
DestinationRateLimited = _error(
    429, "destination_rate_limited", "Too many messages to this destination"
)
QuotaExceeded = _error(429, "quota_exceeded", "Daily quota of this API key used up")
IdempotencyKeyReused = _error(
    422, "idempotency_key_reused", "Idempotency-Key reused with a different request"
)
IdempotencyInProgress = _error(
    409, "idempotency_in_progress", "A request with this Idempotency-Key is in progress"
)
PlivoRejected = _error(400, "plivo_rejected", "Plivo rejected the message")
UpstreamAuthFailed = _error(502, "upstream_auth_failed", "Plivo refused our credentials")
UpstreamError = _error(502, "upstream_error", "Plivo failed to answer properly")
UpstreamRateLimited = _error(503, "upstream_rate_limited", "Plivo is rate-limiting us")
UpstreamUnavailable = _error(503, "upstream_unavailable", "Plivo is unavailable")
UpstreamTimeout = _error(504, "upstream_timeout", "Plivo did not answer in time")
InternalError = _error(500, "internal_error", "Internal server error")
ServiceUnavailable = _error(503, "service_unavailable", "A dependency of the service failed")
NotReady = _error(503, "not_ready", "This replica is not ready")


class SendRateExceeded(AppError):
    """No pacing slot within PACING_MAX_WAIT_SECONDS (`Retry-After`: seconds until one)."""

    status = 503
    code = "send_rate_exceeded"
    title = "Sends toward Plivo are at the configured rate"


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
        error = InternalError()
    error.headers.update(exc.headers or {})
    return problem_response(error, request_id_of(request))


async def _on_unexpected(request: Request, exc: Exception) -> Response:
    log.error("unhandled_exception", exc_info=exc, path=request.url.path)
    return problem_response(InternalError("An unexpected error occurred."), request_id_of(request))


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(AppError, _on_app_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    app.add_exception_handler(Exception, _on_unexpected)


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
