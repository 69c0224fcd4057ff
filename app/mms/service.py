"""Sending an MMS: no FastAPI objects here, only the steps of a send."""

from __future__ import annotations

from app.config import Settings
from app.mms.schemas import SendRequest, SendResponse
from app.plivo.client import OutboundMms
from app.plivo.sender import Sender

STATUS_CALLBACK_PATH = "/api/mms/status"


def callback_url(settings: Settings) -> str | None:
    """Ask Plivo for status callbacks only when the service is reachable from outside."""
    return f"{settings.public_base_url}{STATUS_CALLBACK_PATH}" if settings.public_base_url else None


async def send_mms(request: SendRequest, *, sender: Sender, settings: Settings) -> SendResponse:
    """Validate (done by the model), call Plivo, answer with the tutorial's shape."""
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
