"""The sender alone, over a scripted in-memory Plivo client: which answers are retried,
what each maps to, the deadline, the concurrency cap and the breaker. No sockets."""

from __future__ import annotations

import asyncio
from datetime import datetime

import pytest

from app import errors
from app.plivo import sender as sender_module
from app.plivo.breaker import CircuitBreaker
from app.plivo.client import (
    Accepted,
    OutboundMms,
    PlivoBadResponse,
    PlivoClient,
    PlivoDropped,
    PlivoError,
    PlivoHTTPError,
    PlivoMessage,
    PlivoTimeout,
    PlivoUnreachable,
)
from app.plivo.sender import Sender, map_plivo_error
from app.status import MessageStatus

MMS = OutboundMms(src="+14155550000", dst="+14155550100", text="hi", media_urls=["https://x/a.png"])
OK = Accepted(api_id="api-1", message_uuids=["uuid-1"])


class ScriptedClient(PlivoClient):
    """Answers each send with the next scripted item: an Accepted, a PlivoError, or "hang"."""

    def __init__(self, *script: Accepted | PlivoError | str) -> None:
        self.script = list(script)
        self.calls = 0

    async def send_mms(self, mms: OutboundMms, *, timeout: float) -> Accepted:
        self.calls += 1
        item = self.script.pop(0) if self.script else OK
        if item == "hang":
            await asyncio.sleep(timeout)
            raise PlivoTimeout("no answer")
        if isinstance(item, PlivoError):
            raise item
        assert isinstance(item, Accepted)
        return item

    async def get_message(self, message_uuid: str, *, timeout: float) -> PlivoMessage | None:
        raise NotImplementedError

    async def list_messages(
        self, *, to: str, since: datetime, until: datetime, timeout: float
    ) -> list[PlivoMessage]:
        raise NotImplementedError


def make_sender(client: PlivoClient, *, timeout: float = 5, concurrency: int = 10) -> Sender:
    breaker = CircuitBreaker(threshold=2, reset_seconds=30)
    return Sender(client, timeout_seconds=timeout, max_concurrency=concurrency, breaker=breaker)


def http(status: int, retry_after: float | None = None) -> PlivoHTTPError:
    return PlivoHTTPError(status, f"status {status}", api_id="api-x", retry_after=retry_after)


# What each of Plivo's answers means: (error, class, stored outcome, retried)
MAPPING = [
    (http(400), errors.PlivoRejected, MessageStatus.REJECTED, False),
    (http(422), errors.PlivoRejected, MessageStatus.REJECTED, False),
    (http(401), errors.UpstreamAuthFailed, None, False),
    (http(403), errors.UpstreamAuthFailed, None, False),
    (http(429), errors.UpstreamRateLimited, None, True),
    (http(503), errors.UpstreamUnavailable, None, True),
    (http(500), errors.UpstreamError, MessageStatus.UNKNOWN, False),
    (http(504), errors.UpstreamError, MessageStatus.UNKNOWN, False),
    (PlivoUnreachable("refused"), errors.UpstreamUnavailable, None, True),
    (PlivoDropped("reset"), errors.UpstreamError, MessageStatus.UNKNOWN, False),
    (PlivoTimeout("late"), errors.UpstreamTimeout, MessageStatus.UNKNOWN, False),
    (PlivoBadResponse(202, "html"), errors.UpstreamError, MessageStatus.UNKNOWN, False),
]


@pytest.mark.parametrize(("plivo", "cls", "outcome", "retried"), MAPPING)
def test_each_plivo_answer_maps_to_one_error(plivo, cls, outcome, retried):
    error = map_plivo_error(plivo)
    assert type(error) is cls
    assert error.outcome == outcome
    assert error.retryable is retried


@pytest.mark.parametrize(("plivo", "cls", "outcome", "retried"), MAPPING)
async def test_only_what_plivo_certainly_did_not_take_is_retried(plivo, cls, outcome, retried):
    client = ScriptedClient(plivo, plivo, plivo)
    with pytest.raises(cls):
        await make_sender(client).send(MMS)
    assert client.calls == (sender_module.MAX_ATTEMPTS if retried else 1)


async def test_a_retried_answer_then_success_is_accepted():
    client = ScriptedClient(http(429, retry_after=0), http(503, retry_after=0), OK)
    assert await make_sender(client).send(MMS) == OK
    assert client.calls == 3


async def test_a_retry_after_beyond_the_deadline_is_not_waited_for():
    client = ScriptedClient(http(429, retry_after=30))
    with pytest.raises(errors.UpstreamRateLimited) as refused:
        await make_sender(client, timeout=1).send(MMS)
    assert client.calls == 1
    assert refused.value.headers["Retry-After"] == "30"


async def test_a_refusal_in_before_send_stops_the_send_before_plivo():
    client = ScriptedClient()

    async def refuse() -> None:
        raise errors.DestinationRateLimited("too many")

    with pytest.raises(errors.DestinationRateLimited):
        await make_sender(client).send(MMS, before_send=refuse)
    assert client.calls == 0


async def test_no_slot_within_the_wait_is_503_with_retry_after_one(monkeypatch):
    monkeypatch.setattr(sender_module, "SLOT_WAIT_SECONDS", 0.05)
    client = ScriptedClient("hang")
    sender = make_sender(client, timeout=2, concurrency=1)
    first = asyncio.create_task(sender.send(MMS))
    await asyncio.sleep(0.01)
    with pytest.raises(errors.UpstreamUnavailable) as refused:
        await sender.send(MMS)
    assert refused.value.headers == {"Retry-After": "1"}
    assert client.calls == 1
    first.cancel()


async def test_sick_sends_open_the_breaker_then_sends_fail_fast():
    client = ScriptedClient(http(500), http(500))
    sender = make_sender(client)
    for _ in range(2):
        with pytest.raises(errors.UpstreamError):
            await sender.send(MMS)
    with pytest.raises(errors.UpstreamUnavailable) as refused:
        sender.check_breaker()
    assert int(refused.value.headers["Retry-After"]) >= 1
    with pytest.raises(errors.UpstreamUnavailable):
        await sender.send(MMS)
    assert client.calls == 2


async def test_refusals_that_are_not_plivos_fault_leave_the_breaker_closed():
    client = ScriptedClient(http(400), http(429), http(429), http(429), http(401))
    sender = make_sender(client)
    for cls in (errors.PlivoRejected, errors.UpstreamRateLimited, errors.UpstreamAuthFailed):
        with pytest.raises(cls):
            await sender.send(MMS)
    sender.check_breaker()  # still closed
