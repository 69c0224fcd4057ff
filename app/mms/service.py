"""Sending an MMS: no FastAPI objects here, only the steps of a send."""

from __future__ import annotations

from app.config import Settings
from app.mms.schemas import SendRequest, SendResponse
from app.plivo.client import OutboundMms
from app.plivo.sender import Sender
from app.ratelimit import Limits

STATUS_CALLBACK_PATH = "/api/mms/status"


def callback_url(settings: Settings) -> str | None:
    """Ask Plivo for status callbacks only when the service is reachable from outside."""
    return f"{settings.public_base_url}{STATUS_CALLBACK_PATH}" if settings.public_base_url else None


async def send_mms(
    request: SendRequest, *, caller: str, sender: Sender, limits: Limits, settings: Settings
) -> SendResponse:
    """Check the limits that count only real sends, call Plivo, answer the tutorial's shape."""
    sender.check_breaker()  # an open breaker answers at once and counts against no limit
    await limits.check_send(destination=request.to, caller=caller)
    mms = OutboundMms(
        src=settings.sender_number,
        dst=request.to,
        text=request.text,
        media_urls=request.media_urls,
        callback_url=callback_url(settings),
    )
    accepted = await sender.send(mms)
    return SendResponse(
        message=accepted.message, messageUuid=accepted.message_uuids, apiId=accepted.api_id
    )
