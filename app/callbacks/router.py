"""POST /api/mms/status: Plivo's delivery callbacks (form-encoded, signed)."""

from __future__ import annotations

import functools

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field
from starlette.responses import Response

from app import errors
from app.callbacks import service, signature
from app.deps import ServicesDep
from app.openapi import body_read_by_hand
from app.paths import CALLBACK_PATH
from app.phone import from_plivo

router = APIRouter(prefix="/api/mms", tags=["callbacks"])
_OK = b'{"status":"ok"}'
_REPLAY = b'{"status":"duplicate"}'


class CallbackAck(BaseModel):
    status: str = Field(examples=["ok"], description="`ok`, or `duplicate` for a replayed nonce")


class CallbackForm(BaseModel):
    """The form Plivo posts (documentation: the route verifies the signature over the raw
    form before reading any field)."""

    MessageUUID: str
    Status: str = Field(examples=["delivered"])
    ErrorCode: str | None = None
    Sequence: str | None = None
    To: str | None = None
    From: str | None = None


# What a route that reads a signed Plivo form can answer besides its 200.
SIGNED_FORM_ERRORS = (
    errors.InvalidSignature,
    errors.ValidationFailed,
    errors.PayloadTooLarge,
    errors.ServiceUnavailable,
    errors.InternalError,
)
# The signature headers the route reads itself (documentation, as for the form).
SIGNATURE_HEADERS = {
    "parameters": [
        {"name": name.title(), "in": "header", "required": False, "schema": {"type": "string"}}
        for name in (signature.V3, signature.V3_NONCE, signature.V2, signature.V2_NONCE)
    ]
}


def _field_problem(
    uuid: object, status: object, error_code: object, sequence: object
) -> tuple[str, str] | None:
    """What the store cannot hold (a signed callback can still be odd): a 422, not a 503
    that Plivo would retry."""
    if not isinstance(uuid, str) or not uuid or not isinstance(status, str) or not status:
        return "MessageUUID/Status", "MessageUUID and Status are required"
    if len(uuid) > 64 or len(status) > 16:
        return "MessageUUID/Status", "MessageUUID (≤ 64) or Status (≤ 16) too long"
    if error_code is not None and (not isinstance(error_code, str) or len(error_code) > 8):
        return "ErrorCode", "at most 8 characters"
    if isinstance(sequence, str) and sequence and not (sequence.isdigit() and len(sequence) <= 9):
        return "Sequence", "a number below 10^9"
    return None


def signed_url(request: Request, public_base_url: str, path: str = CALLBACK_PATH) -> str:
    """What Plivo signed: PUBLIC_BASE_URL + path, else the URL we were called on."""
    if public_base_url:
        query = request.url.query
        return f"{public_base_url}{path}" + (f"?{query}" if query else "")
    return str(request.url)


@router.post(
    "/status",
    response_model=CallbackAck,
    summary="Plivo delivery callback (signed)",
    responses=errors.problem_responses(*SIGNED_FORM_ERRORS),
    openapi_extra={
        **body_read_by_hand(CallbackForm, "application/x-www-form-urlencoded"),
        **SIGNATURE_HEADERS,
    },
)
async def status_callback(request: Request, services: ServicesDep) -> Response:
    """Store a delivery report. Answered fast; no outbound call is made here."""
    settings, db = services.settings, services.db
    if not settings.auth_token:
        # Sandbox mode has no token to check against: nothing could be verified.
        raise errors.InvalidSignature("Sandbox mode (no PLIVO_AUTH_TOKEN) accepts no callbacks.")
    params, verdict = await signature.read_signed_form(
        request,
        url=signed_url(request, settings.public_base_url),
        auth_token=settings.auth_token,
        accepted=settings.plivo_signature,
    )
    scheme = request.scope["state"]["signature"] = verdict.scheme
    metrics = services.metrics
    uuid, status = params.get("MessageUUID"), params.get("Status") or None
    if not verdict.signed:
        metrics.callback(status, scheme)  # the status of an unsigned body: a hint only
        raise errors.InvalidSignature("The callback is not signed by Plivo with our token.")
    error_code = params.get("ErrorCode")
    sequence = params.get("Sequence")
    problem = _field_problem(uuid, status, error_code, sequence)
    if problem is not None or not isinstance(uuid, str) or status is None:
        metrics.callback(None, scheme)
        field, message = problem or ("MessageUUID/Status", "MessageUUID and Status are required")
        raise errors.invalid(("body", field), message)
    fresh = await service.record_status(
        db,
        message_uuid=uuid,
        status=status,
        error_code=error_code if isinstance(error_code, str) else None,
        sequence=sequence if isinstance(sequence, str) else None,
        nonces=verdict.nonces,
        plivo_time=next(
            (
                v
                for k in ("DeliveryReportTime", "SentTime", "QueuedTime", "MessageTime")
                if isinstance(v := params.get(k), str) and v
            ),
            None,
        ),
        to_number=from_plivo(to) if isinstance(to := params.get("To"), str) else None,
        on_optout=functools.partial(metrics.optout_changed, "optout"),
    )
    metrics.callback(status, scheme if fresh else "replayed")
    request.scope["state"]["message_uuid"] = uuid
    return Response(_OK if fresh else _REPLAY, media_type="application/json")
