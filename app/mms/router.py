"""POST /api/mms/send: validate, call Plivo, answer."""

from __future__ import annotations

from fastapi import APIRouter

from app import errors
from app.deps import SenderDep, SettingsDep
from app.mms import service
from app.mms.schemas import SendRequest, SendResponse

router = APIRouter(prefix="/api/mms", tags=["mms"])

SEND_ERRORS = (
    errors.ValidationFailed,
    errors.PayloadTooLarge,
    errors.PlivoRejected,
    errors.UpstreamAuthFailed,
    errors.UpstreamError,
    errors.UpstreamRateLimited,
    errors.UpstreamUnavailable,
    errors.UpstreamTimeout,
    errors.InternalError,
)


@router.post(
    "/send",
    response_model=SendResponse,
    summary="Send an MMS through Plivo",
    responses=errors.problem_responses(*SEND_ERRORS),
)
async def send_mms(body: SendRequest, sender: SenderDep, settings: SettingsDep) -> SendResponse:
    """Queue one MMS with Plivo. A 200 means Plivo queued it, not that it was delivered."""
    return await service.send_mms(body, sender=sender, settings=settings)
