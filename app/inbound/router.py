"""POST /api/mms/inbound: Plivo's `message_url` (form-encoded, signed like callbacks)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.responses import Response

from app import errors
from app.callbacks import signature
from app.callbacks.form import FormError, parse_form
from app.callbacks.router import SIGNATURE_HEADERS, SIGNED_FORM_ERRORS, signed_url
from app.deps import ServicesDep
from app.inbound import service
from app.inbound.service import InboundForm
from app.logging import get_logger
from app.openapi import body_read_by_hand
from app.paths import INBOUND_PATH

router = APIRouter(tags=["callbacks"])
log = get_logger("app.inbound")


async def _read_unsigned(request: Request) -> dict[str, str]:
    try:
        return parse_form(await request.body())
    except FormError as exc:
        raise errors.invalid(("body", exc.field), exc.message) from None


@router.post(
    INBOUND_PATH,
    status_code=200,
    response_class=Response,
    summary="Plivo inbound message (signed): stored, STOP/START applied",
    responses={
        200: {"description": "Stored (or a replay: nothing changed); empty body"},
        **errors.problem_responses(*SIGNED_FORM_ERRORS),
    },
    openapi_extra={
        **body_read_by_hand(InboundForm, "application/x-www-form-urlencoded"),
        **SIGNATURE_HEADERS,
    },
)
async def inbound_message(request: Request, services: ServicesDep) -> Response:
    """Verified like status callbacks (signature, nonces, replays answered 200 and
    changing nothing); in sandbox mode (no auth token) unsigned requests are accepted."""
    settings, metrics = services.settings, services.metrics
    if settings.auth_token:
        params, verdict = await signature.read_signed_form(
            request,
            url=signed_url(request, settings.public_base_url, INBOUND_PATH),
            auth_token=settings.auth_token,
            accepted=settings.plivo_signature,
        )
        scheme = request.scope["state"]["signature"] = verdict.scheme
        if not verdict.signed:
            metrics.inbound(scheme)
            raise errors.InvalidSignature("The request is not signed by Plivo with our token.")
        nonces = verdict.nonces
    else:
        # Sandbox mode: no token to verify with, so STOP can be tried with curl.
        log.warning("inbound_unsigned_accepted", reason="sandbox mode: no PLIVO_AUTH_TOKEN")
        params, nonces, scheme = await _read_unsigned(request), (), "unsigned"
    try:
        form = InboundForm.model_validate(params)
    except ValidationError as exc:
        raise RequestValidationError(
            [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False)]
        ) from None
    outcome = await service.receive(services.db, form, settings=settings, nonces=nonces)
    metrics.inbound(scheme if outcome.fresh else "replayed")
    if outcome.changed is not None:
        metrics.optout_changed(outcome.changed, "inbound")
    request.scope["state"]["message_uuid"] = form.MessageUUID
    return Response(status_code=200)
