"""Sandbox mode: a PlivoClient that answers like Plivo, in process, for trying the service
without a Plivo account. Magic destination numbers end in Plivo's common failures."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
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

# Last four digits of `to` -> what happens (docs/api.md, "Sandbox mode").
SEND_FAILURES: dict[str, Callable[[str], PlivoError]] = {
    "0400": lambda to: PlivoHTTPError(400, f"'{to}' is not a valid phone number."),
    "0401": lambda to: PlivoHTTPError(401, "Authentication credentials invalid"),
    "0429": lambda to: PlivoHTTPError(429, "Too many requests", retry_after=1),
    "0500": lambda to: PlivoHTTPError(500, "Internal server error"),
    "0502": lambda to: PlivoDropped("connection dropped after sending (sandbox)"),
    "0503": lambda to: PlivoHTTPError(503, "Service unavailable", retry_after=1),
}
HANG = "0504"  # never answers: the send ends in 504 upstream_timeout
# Last four digits -> how the simulated delivery ends: (status, error code); default delivered.
DELIVERY_ENDINGS = {"0610": ("failed", "50"), "0620": ("undelivered", "80"), "0630": (None, None)}
SENT_AFTER_SECONDS = 0.5
FINAL_AFTER_SECONDS = 1.5

# deliver(message_uuid=…, status=…, error_code=…, sequence=…): the callback service function.
Deliver = Callable[..., Awaitable[object]]


def _new_id() -> str:
    return str(uuid.uuid4())


class SandboxPlivoClient(PlivoClient):
    """Same interface as the aiohttp client; nothing leaves the process."""

    mode = "sandbox"

    def __init__(self) -> None:
        self.sent: dict[str, PlivoMessage] = {}
        self.deliver: Deliver | None = None  # set by the app once the store is up
        self._deliveries: set[asyncio.Task[None]] = set()

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
        if self.deliver is not None:
            task = asyncio.create_task(self._simulate_delivery(message_uuid, suffix))
            self._deliveries.add(task)
            task.add_done_callback(self._deliveries.discard)
        return Accepted(api_id=_new_id(), message_uuids=[message_uuid])

    async def _simulate_delivery(self, message_uuid: str, suffix: str) -> None:
        """queued -> sent -> delivered (or the magic ending), through the callback service."""
        final, error = DELIVERY_ENDINGS.get(suffix, ("delivered", None))
        steps: list[tuple[float, str, str | None, int]] = [(SENT_AFTER_SECONDS, "sent", None, 2)]
        if final is not None:
            steps.append((FINAL_AFTER_SECONDS - SENT_AFTER_SECONDS, final, error, 3))
        for delay, status, code, sequence in steps:
            await asyncio.sleep(delay)
            message = self.sent[message_uuid]
            self.sent[message_uuid] = PlivoMessage(
                message_uuid, status, code, message.to_number, message.message_time
            )
            assert self.deliver is not None
            await self.deliver(
                message_uuid=message_uuid, status=status, error_code=code, sequence=str(sequence)
            )

    async def aclose(self) -> None:
        """Let simulated deliveries in progress finish (they take ~1.5 s), then stop."""
        if self._deliveries:
            _, pending = await asyncio.wait(self._deliveries, timeout=FINAL_AFTER_SECONDS + 1)
            for task in pending:
                task.cancel()

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
