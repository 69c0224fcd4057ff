"""POST /api/mms/send: authenticate, validate, send, answer."""

from __future__ import annotations

import orjson
from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.responses import Response

from app import errors
from app.deps import CallerDep, LimitsDep, SenderDep, SettingsDep
from app.mms import service
from app.mms.schemas import SendRequest, SendResponse

router = APIRouter(prefix="/api/mms", tags=["mms"])

SEND_ERRORS = (
    errors.ValidationFailed,
    errors.PayloadTooLarge,
    errors.Unauthorized,
    errors.RateLimited,
    errors.DestinationRateLimited,
    errors.QuotaExceeded,
    errors.PlivoRejected,
    errors.UpstreamAuthFailed,
    errors.UpstreamError,
    errors.UpstreamRateLimited,
    errors.UpstreamUnavailable,
    errors.UpstreamTimeout,
    errors.InternalError,
)
# The body is parsed by hand (below), so it is declared for OpenAPI here.
SEND_BODY = {
    "security": [{"bearer": []}, {"apiKey": []}],
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/SendRequest"}}},
    },
}


async def read_send_request(request: Request) -> SendRequest:
    """Parse after authentication (a stranger learns nothing about the body), in one pass."""
    content_type = request.headers.get("content-type", "")
    if content_type.split(";")[0].strip().lower() != "application/json":
        raise RequestValidationError(
            [
                {
                    "type": "content_type",
                    "loc": ("body",),
                    "msg": "Content-Type must be application/json",
                    "input": None,
                }
            ]
        )
    try:
        return SendRequest.model_validate_json(await request.body())
    except ValidationError as exc:
        raise RequestValidationError(
            [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False)]
        ) from None


@router.post(
    "/send",
    response_model=SendResponse,
    summary="Send an MMS through Plivo",
    responses=errors.problem_responses(*SEND_ERRORS),
    openapi_extra=SEND_BODY,
)
async def send_mms(
    request: Request, caller: CallerDep, sender: SenderDep, limits: LimitsDep, settings: SettingsDep
) -> Response:
    """Queue one MMS with Plivo. A 200 means Plivo queued it, not that it was delivered."""
    body = await read_send_request(request)
    state = request.scope["state"]
    state["to"] = body.to  # masked by the log processors
    try:
        result = await service.send_mms(
            body, caller=caller, sender=sender, limits=limits, settings=settings
        )
    except errors.AppError as exc:
        state["code"] = exc.code
        raise
    state["message_uuid"] = result.messageUuid[0]
    return Response(orjson.dumps(result.model_dump()), media_type="application/json")
