"""One send toward Plivo: a total deadline, a concurrency cap, a
circuit breaker, and retries only where Plivo certainly did not take the message."""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import Awaitable, Callable

from app.errors import (
    AppError,
    PlivoRejected,
    UpstreamAuthFailed,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from app.logging import get_logger
from app.plivo.breaker import CircuitBreaker, CircuitOpen
from app.plivo.client import (
    Accepted,
    OutboundMms,
    PlivoBadResponse,
    PlivoClient,
    PlivoDropped,
    PlivoError,
    PlivoHTTPError,
    PlivoTimeout,
    PlivoUnreachable,
)
from app.status import MessageStatus

log = get_logger("app.sender")

MAX_ATTEMPTS = 3
SLOT_WAIT_SECONDS = 1.0
BACKOFF_BASE_SECONDS = 0.2
BACKOFF_CAP_SECONDS = 2.0
DEFAULT_RETRY_AFTER = 2


def _retry_after_header(seconds: float | None) -> dict[str, str]:
    value = DEFAULT_RETRY_AFTER if seconds is None else max(1, math.ceil(seconds))
    return {"Retry-After": str(value)}


def map_plivo_error(exc: PlivoError) -> AppError:
    """Plivo's answer (or silence) -> our error; its class says the status, the stored
    outcome and whether the attempt may be retried."""
    api_id = exc.api_id
    if isinstance(exc, PlivoHTTPError):
        status = exc.status
        if status in (400, 422):
            return PlivoRejected(exc.error, plivo_api_id=api_id)
        if status in (401, 403):
            detail = "Plivo refused the service's credentials or permissions."
            return UpstreamAuthFailed(detail, plivo_api_id=api_id)
        if status == 429:
            return UpstreamRateLimited(
                "Plivo is rate-limiting this account; retry later.",
                headers=_retry_after_header(exc.retry_after),
                plivo_api_id=api_id,
            )
        if status == 503:
            return UpstreamUnavailable(
                "Plivo is unavailable; retry later.",
                headers=_retry_after_header(exc.retry_after),
                plivo_api_id=api_id,
            )
        detail = f"Plivo answered HTTP {status}; the message may or may not have been queued."
        outcome = MessageStatus.UNKNOWN if exc.may_have_sent else None
        return UpstreamError(detail, plivo_api_id=api_id, outcome=outcome)
    if isinstance(exc, PlivoUnreachable):
        return UpstreamUnavailable("Plivo could not be reached.", headers=_retry_after_header(None))
    if isinstance(exc, PlivoDropped):
        detail = "The connection to Plivo broke after the request was sent; outcome unknown."
        return UpstreamError(detail)
    if isinstance(exc, PlivoBadResponse):
        detail = "Plivo's answer could not be understood; the message may have been queued."
        return UpstreamError(detail)
    if isinstance(exc, PlivoTimeout):
        detail = "Plivo did not answer in time; the message may or may not have been queued."
        return UpstreamTimeout(detail)
    return UpstreamError(str(exc))


def attempt_outcome(exc: PlivoError) -> str:
    """The `outcome` label of a failed attempt (bounded: Plivo's status is 100-599)."""
    if isinstance(exc, PlivoHTTPError):
        return f"http_{exc.status}" if 100 <= exc.status <= 599 else "http_other"
    if isinstance(exc, PlivoUnreachable):
        return "unreachable"
    if isinstance(exc, PlivoDropped):
        return "dropped"
    if isinstance(exc, PlivoTimeout):
        return "timeout"
    if isinstance(exc, PlivoBadResponse):
        return "bad_response"
    return "error"


def _is_sick(exc: PlivoError | None) -> bool:
    """Outcomes that say Plivo is unwell: 5xx, timeouts, connection failures (not 4xx, 429)."""
    if exc is None:
        return False
    if isinstance(exc, PlivoHTTPError):
        return exc.status >= 500
    return True


class Sender:
    """Wraps a PlivoClient (live or sandbox) with the deadline, cap, breaker and retries."""

    def __init__(
        self,
        client: PlivoClient,
        *,
        timeout_seconds: float,
        max_concurrency: int,
        breaker: CircuitBreaker,
        on_attempt: Callable[[str, float], None] | None = None,
        on_in_flight: Callable[[int], None] | None = None,
    ) -> None:
        self.client = client
        self.timeout_seconds = timeout_seconds
        self.max_concurrency = max_concurrency
        self.breaker = breaker
        self._slots = asyncio.Semaphore(max_concurrency)
        self.in_flight = 0
        self._on_attempt = on_attempt  # metrics: (outcome, seconds) once per attempt
        self._on_in_flight = on_in_flight  # metrics: the new in_flight value

    def check_breaker(self) -> None:
        """Fail fast, before any limit is counted, while the breaker is open."""
        try:
            self.breaker.check()
        except CircuitOpen as exc:
            raise _circuit_open(exc) from None

    async def send(
        self, mms: OutboundMms, *, before_send: Callable[[], Awaitable[None]] | None = None
    ) -> Accepted:
        """`before_send` runs once the send holds a slot and the breaker let it through (the
        limits that count only sends going on toward Plivo); raising there stops the send."""
        loop = asyncio.get_running_loop()
        try:
            await asyncio.wait_for(self._slots.acquire(), timeout=SLOT_WAIT_SECONDS)
        except TimeoutError:
            raise UpstreamUnavailable(
                "Too many sends in flight toward Plivo; retry shortly.",
                headers={"Retry-After": "1"},
            ) from None
        try:
            try:
                is_trial = self.breaker.admit()
            except CircuitOpen as exc:
                raise _circuit_open(exc) from None
            if is_trial:
                log.info("circuit_trial")
            try:
                if before_send is not None:
                    await before_send()
                # The deadline starts once the send holds its slot (waiting is ≤ 1 s).
                return await self._attempts(mms, loop.time() + self.timeout_seconds, is_trial)
            finally:
                if is_trial:  # cancelled or finished: the next send may be the trial again
                    self.breaker.release_trial()
        finally:
            self._slots.release()

    async def _attempts(self, mms: OutboundMms, deadline: float, is_trial: bool) -> Accepted:
        loop = asyncio.get_running_loop()
        attempt = 0
        while True:
            attempt += 1
            remaining = deadline - loop.time()
            self.in_flight += 1
            if self._on_in_flight:
                self._on_in_flight(self.in_flight)
            started = loop.time()
            outcome: str | None = None  # stays None if cancelled: no outcome to count
            try:
                if remaining <= 0:
                    raise PlivoTimeout("deadline reached before the attempt")
                accepted = await self.client.send_mms(mms, timeout=remaining)
            except PlivoError as exc:
                outcome = attempt_outcome(exc)
                log.debug(
                    "plivo_attempt",
                    attempt=attempt,
                    outcome=type(exc).__name__,
                    error=str(exc),
                    duration_ms=round((loop.time() - started) * 1000, 2),
                )
                error = map_plivo_error(exc)
                delay = self._retry_delay(exc, error, attempt, deadline - loop.time())
                if delay is None:
                    self.breaker.record(sick=_is_sick(exc), trial=is_trial)
                    raise error from None
                log.info("plivo_retry", attempt=attempt, delay_s=round(delay, 3), error=str(exc))
            else:
                outcome = "accepted"
                log.debug(
                    "plivo_attempt",
                    attempt=attempt,
                    outcome="accepted",
                    api_id=accepted.api_id,
                    duration_ms=round((loop.time() - started) * 1000, 2),
                )
                self.breaker.record(sick=False, trial=is_trial)
                return accepted
            finally:
                self.in_flight -= 1
                if self._on_in_flight:
                    self._on_in_flight(self.in_flight)
                if self._on_attempt and outcome is not None:
                    self._on_attempt(outcome, loop.time() - started)
            await asyncio.sleep(delay)

    @staticmethod
    def _retry_delay(
        exc: PlivoError, error: AppError, attempt: int, remaining: float
    ) -> float | None:
        """Seconds to wait before retrying, or None when this failure is final: only an
        answer that says Plivo took nothing and may take it later (`error.retryable`)."""
        if attempt >= MAX_ATTEMPTS or not error.retryable:
            return None
        backoff = random.uniform(0, min(BACKOFF_CAP_SECONDS, BACKOFF_BASE_SECONDS * 2**attempt))
        retry_after = getattr(exc, "retry_after", None)
        delay = max(backoff, retry_after) if retry_after is not None else backoff
        # A retry needs time to run after the wait; never wait past the deadline.
        return delay if delay + 0.05 < remaining else None


def _circuit_open(exc: CircuitOpen) -> AppError:
    return UpstreamUnavailable(
        "Plivo has been failing; the circuit breaker is open.",
        headers={"Retry-After": str(exc.retry_after)},
    )
