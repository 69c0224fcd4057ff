"""Sandbox mode: a PlivoClient that answers like Plivo, in process, for trying the service
without a Plivo account. Magic destination numbers end in Plivo's common failures."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from datetime import UTC, datetime

from app.plivo.client import (
    Accepted,
    OutboundMms,
    PlivoClient,
    PlivoDropped,
    PlivoError,
    PlivoHTTPError,
    PlivoMessage,
    PlivoTimeout,
)

# Last four digits of `to` -> what happens (README "Sandbox mode").
SEND_FAILURES: dict[str, Callable[[str], PlivoError]] = {
    "0400": lambda to: PlivoHTTPError(400, f"'{to}' is not a valid phone number."),
    "0401": lambda to: PlivoHTTPError(401, "Authentication credentials invalid"),
    "0429": lambda to: PlivoHTTPError(429, "Too many requests", retry_after=1),
    "0500": lambda to: PlivoHTTPError(500, "Internal server error"),
    "0502": lambda to: PlivoDropped("connection dropped after sending (sandbox)"),
    "0503": lambda to: PlivoHTTPError(503, "Service unavailable", retry_after=1),
}
HANG = "0504"  # never answers: the send ends in 504 upstream_timeout


def _new_id() -> str:
    return str(uuid.uuid4())


class SandboxPlivoClient(PlivoClient):
    """Same interface as the aiohttp client; nothing leaves the process."""

    mode = "sandbox"

    def __init__(self) -> None:
        self.sent: dict[str, PlivoMessage] = {}

    async def send_mms(self, mms: OutboundMms, *, timeout: float) -> Accepted:
        suffix = mms.dst[-4:]
        if suffix in SEND_FAILURES:
            raise SEND_FAILURES[suffix](mms.dst)
        if suffix == HANG:
            await asyncio.sleep(timeout)
            raise PlivoTimeout("sandbox hang")
        message_uuid = _new_id()
        self.sent[message_uuid] = PlivoMessage(
            message_uuid, "queued", None, mms.dst.lstrip("+"), datetime.now(UTC)
        )
        return Accepted(api_id=_new_id(), message_uuids=[message_uuid])

    async def get_message(self, message_uuid: str, *, timeout: float) -> PlivoMessage | None:
        return self.sent.get(message_uuid)

    async def list_messages(
        self, *, to: str, since: datetime, until: datetime, timeout: float
    ) -> list[PlivoMessage]:
        return [
            m
            for m in self.sent.values()
            if m.to_number == to.lstrip("+") and m.message_time and since <= m.message_time <= until
        ]
