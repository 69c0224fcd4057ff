"""The outbox: every replica sends the scheduled messages that are due.

Built on the one claim mechanism (`app.worker.ClaimingWorker`, `app.store.claims`): due
`scheduled` rows are claimed with a lease (`claimed_until`), whose value is also the
claim's fencing token (`app.store.outbox`). For each claimed message:

1. An attempt mark already set means its last holder died during the POST: Plivo may
   have it. It becomes an unknown outcome for the reconciler (from the attempt's start)
   and is never sent again.
2. While the store is failing or a send's record is pending, nothing is sent (the claim
   is handed back).
3. At send time: a key removed from API_KEYS or an opted-out recipient cancels it; the
   per-destination limit moves its sendAt (no refusal); media preflight runs again
   (cached); a quiet-hours message outside the window moves to the next one; an open
   breaker backs off.
4. A pacing slot, only while the pacer's queue is under half of PACING_MAX_WAIT_SECONDS
   (a backlog drains at exactly SEND_RATE and synchronous sends still find slots). One
   handler per process asks at a time; the others wait their turn, so a refused ask is
   followed by a sleep, not by a storm of asks. While the fleet-wide pace is unavailable
   (Redis down) the outbox pauses.
5. The attempt mark is written and committed (conditional on the claim), then the POST
   goes through the same sender as a synchronous send and the outcome is recorded by the
   same code (`app.mms.service`). Plivo certainly did not take it (429, 503, unreachable,
   breaker open): the mark is cleared and it is retried with jittered exponential backoff
   until OUTBOX_GIVE_UP_HOURS after its original sendAt, then `not_sent`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import random
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy.ext.asyncio import AsyncConnection

from app import quiet_hours
from app.auth import Authenticator
from app.config import Settings
from app.errors import AppError, DestinationRateLimited, MediaRejected
from app.logging import get_logger
from app.media import PER_URL_SECONDS, Preflight
from app.mms.service import callback_url, outcome_fields, record_outcome, send_to_plivo
from app.pacing import Pacer
from app.plivo.client import Accepted, OutboundMms
from app.plivo.sender import SLOT_WAIT_SECONDS, Sender
from app.ratelimit import Limits
from app.reconcile import first_check_at
from app.status import MessageStatus
from app.store import optouts
from app.store import outbox as store
from app.store.db import Database, FunctionOp
from app.store.repository import now_ms
from app.worker import ClaimingWorker

log = get_logger("app.outbox")
LEASE_MARGIN_SECONDS = 20.0  # the record's write (the writer's own bound is 15 s), and slack
BACKOFF_BASE_SECONDS = 5.0
BACKOFF_CAP_SECONDS = 900.0
REDIS_PAUSE_SECONDS = 0.5  # how often a paused outbox tries the shared pace again
BACKLOG_REPORT_SECONDS = 1.0  # at most one backlog count per second per process


MAX_CONCURRENCY = 1000


def outbox_concurrency(settings: Settings) -> int:
    """Messages handled at once: what the pace lets out in about three seconds -- a second
    waiting in the pacer's queue, the rest for the mark, the POST and the record, so the
    pace, not the handlers, sets the rate -- yet short enough that a claimed message waits
    seconds for its slot, never its lease away. Calls to Plivo stay capped by the sender
    (PLIVO_MAX_CONCURRENCY); without pacing, that cap is the outbox's too."""
    rate = settings.send_rate_per_second
    if rate <= 0:
        return settings.plivo_max_concurrency
    return max(1, min(MAX_CONCURRENCY, math.ceil(rate * 3)))


def lease_seconds(settings: Settings) -> float:
    """Long enough for everything a holder does with a claimed message: the media check
    when it is on (its URLs at once, each within the check's own bound and the send's
    deadline), the pacing wait (at most half of PACING_MAX_WAIT_SECONDS once granted, after
    some turns in the queue), the concurrency slot, the send's deadline, the record."""
    preflight = (
        min(PER_URL_SECONDS, settings.plivo_timeout_seconds)
        if settings.media_preflight_enabled
        else 0.0
    )
    return (
        preflight
        + settings.pacing_max_wait_seconds
        + SLOT_WAIT_SECONDS
        + settings.plivo_timeout_seconds
        + LEASE_MARGIN_SECONDS
    )


def backoff_ms(failures: int, retry_after: float | None = None) -> int:
    """Jittered exponential backoff after `failures` (1, 2, ...) not-sent attempts, never
    sooner than a Retry-After Plivo gave."""
    ceiling = min(BACKOFF_CAP_SECONDS, BACKOFF_BASE_SECONDS * 2 ** max(0, failures - 1))
    delay = random.uniform(ceiling / 2, ceiling)
    if retry_after is not None:
        delay = max(delay, retry_after)
    return int(delay * 1000)


def _retry_after(error: AppError) -> float | None:
    try:
        return float(error.headers["Retry-After"])
    except (KeyError, ValueError):
        return None


class Outbox(ClaimingWorker):
    """One per process; see the module's docstring."""

    name = "outbox"
    idle_poll_seconds = 1.0

    def __init__(
        self,
        db: Database,
        *,
        sender: Sender,
        limits: Limits,
        settings: Settings,
        auth: Authenticator,
        pacer: Pacer | None = None,
        preflight: Preflight | None = None,
        on_outcome: Callable[[str], None] | None = None,
        on_sent: Callable[[str, str], None] | None = None,
        on_backlog: Callable[[int, int, float], None] | None = None,
    ) -> None:
        super().__init__(db, concurrency=outbox_concurrency(settings))
        self.sender = sender
        self.limits = limits
        self.settings = settings
        self.auth = auth
        self.pacer = pacer
        self.preflight = preflight
        self.lease_ms = int(lease_seconds(settings) * 1000)
        self._on_outcome = on_outcome  # metrics: what became of a claimed message
        self._on_sent = on_sent  # metrics: (origin, status) of a recorded send
        self._on_backlog = on_backlog  # metrics: (due, future, age of the oldest due s)
        self._slot_turn = asyncio.Lock()  # one pacing ask at a time in this process
        self._paused_until = 0.0  # loop time: the shared pace is unavailable until then
        self._next_report = 0.0
        self.draining: Callable[[], bool] = lambda: False  # SIGTERM: claim nothing more

    # ClaimingWorker ----------------------------------------------------------------------
    def can_claim(self) -> bool:
        if self.draining() or not self.db.writable:
            return False  # SIGTERM, or the store failing / a record pending: send nothing
        return asyncio.get_running_loop().time() >= self._paused_until  # pace unavailable

    async def claim(self, conn: AsyncConnection, limit: int) -> list[dict[str, Any]]:
        return await store.claim_due(conn, now=now_ms(), batch=limit, lease_ms=self.lease_ms)

    async def release(self, conn: AsyncConnection, rows: list[dict[str, Any]]) -> None:
        await store.release_claims(conn, [row["id"] for row in rows])

    async def after_claim(self) -> None:
        loop = asyncio.get_running_loop()
        if self._on_backlog is None or loop.time() < self._next_report:
            return
        self._next_report = loop.time() + BACKLOG_REPORT_SECONDS
        now = now_ms()
        async with self.db.read() as conn:
            due, oldest, future = await store.backlog(conn, now)
        self._on_backlog(due, future, max(0.0, (now - oldest) / 1000) if oldest else 0.0)

    async def handle(self, row: dict[str, Any]) -> None:
        outcome = await self._send(row)
        if self._on_outcome:
            self._on_outcome(outcome)
        log.info("outbox_send", message_id=row["id"], outcome=outcome, attempt=row["attempts"])

    # One message -------------------------------------------------------------------------
    async def _send(self, row: dict[str, Any]) -> str:
        token: int = row["claimed_until"]
        if row["attempt_started_at"] is not None:
            return await self._lost(row, token)
        if not self.db.writable:
            await self._hand_back(row)
            return "deferred"
        if self.auth.enabled and row["caller"] not in self.auth.names:
            return await self._cancel(row, token, "key_removed")
        if await optouts.is_listed(self.db, row["to_number"]):
            return await self._cancel(row, token, "opted_out")
        wait = await self.limits.destination_wait(row["to_number"])
        if wait:  # protects the recipient at delivery time: later, not refused
            return await self._move(row, token, now_ms() + wait * 1000)
        media_urls: list[str] = orjson.loads(row["media_urls"] or "[]")
        if self.preflight is not None:
            try:
                await self.preflight.check(media_urls, deadline=self.settings.plivo_timeout_seconds)
            except MediaRejected as error:  # maybe a link fixed soon: not sent, retried
                return await self._not_sent(row, token, error)
        moved = await self._outside_quiet_hours(row, token)
        if moved is not None:
            return moved
        try:
            self.sender.check_breaker()
        except AppError as error:
            return await self._not_sent(row, token, error)
        slot = await self._take_slot()
        if slot is not True:
            await self._hand_back(row)
            if slot is None:  # the shared pace (Redis) is unavailable: pause
                self._paused_until = asyncio.get_running_loop().time() + REDIS_PAUSE_SECONDS
            return "deferred"
        # The wait may have crossed the window's end (a wasted slot, at a boundary only).
        moved = await self._outside_quiet_hours(row, token)
        if moved is not None:
            return moved
        # Counted before the mark, so that only the POST itself follows it: a crash between
        # the two leaves an unknown outcome, and that window is kept as short as it can be.
        try:
            await self.limits.count_destination(destination=row["to_number"])
        except DestinationRateLimited as error:  # a race spent the limit: later, not refused
            return await self._move(row, token, now_ms() + 1000 * int(_retry_after(error) or 1))
        started = now_ms()
        lease_until = started + self.lease_ms
        mark = functools.partial(
            store.mark_attempt,
            message_id=row["id"],
            token=token,
            now=started,
            lease_until=lease_until,
        )
        if not await self.db.write(FunctionOp(mark)):
            log.warning("outbox_claim_lost", message_id=row["id"])
            return "deferred"  # another replica holds it now: send nothing
        token = lease_until
        mms = OutboundMms(
            src=self.settings.sender_number,
            dst=row["to_number"],
            text=row["text"] or "",
            media_urls=media_urls,
            callback_url=callback_url(self.settings),
        )
        try:
            accepted = await send_to_plivo(self.sender, mms)
        except AppError as error:
            if error.outcome is None:  # Plivo certainly does not have it
                return await self._not_sent(row, token, error)
            await self._record(row, error.outcome, None, started)
            return error.outcome.value
        await self._record(row, MessageStatus.QUEUED, accepted, started)
        return MessageStatus.QUEUED.value

    async def _record(
        self,
        row: dict[str, Any],
        status: MessageStatus,
        accepted: Accepted | None,
        started: int,
    ) -> None:
        """Exactly as a synchronous send records its outcome (the same code)."""
        fields = outcome_fields(
            row["id"],
            status=status,
            accepted=accepted,
            text=row["text"],
            settings=self.settings,
            attempt_started=started,
        )
        fields["caller"] = row["caller"]  # whose webhook endpoint hears of it
        await record_outcome(self.db, fields, existing=True)
        if self._on_sent:
            self._on_sent("outbox", status.value)

    async def _take_slot(self) -> bool | None:
        """A pacing slot within half of PACING_MAX_WAIT_SECONDS, waited for; False when
        stopping, None while the shared pace is unavailable."""
        pacer = self.pacer
        if pacer is None:
            return True
        limit = self.settings.pacing_max_wait_seconds / 2
        async with self._slot_turn:
            while True:
                if self.stopping:
                    return False
                reservation = await pacer.reserve_shared(limit)
                if reservation is None:
                    return None
                if reservation.granted:
                    break
                # The queue is longer than `limit`: it is short enough again in this long.
                await self._pause(max(reservation.delay - limit, 0.001))
        if reservation.delay > 0:
            await asyncio.sleep(reservation.delay)  # the slot is ours: even when stopping
        return True

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    async def _outside_quiet_hours(self, row: dict[str, Any], token: int) -> str | None:
        if not row["quiet_hours"]:
            return None
        now = datetime.now(UTC)
        zones = quiet_hours.zones_for(row["to_number"])
        window = self.settings.quiet_window
        if quiet_hours.inside(window, zones, now):
            return None
        moment = quiet_hours.next_moment(window, zones, now)
        if moment is None:  # cannot happen for a window accepted at send time; be safe
            return await self._not_sent(row, token, None)
        return await self._move(row, token, int(moment.timestamp() * 1000))

    # Outcomes that are not a send ------------------------------------------------------
    async def _write(self, function: Callable[[AsyncConnection], Any]) -> Any:
        return await self.db.write(FunctionOp(function))

    async def _hand_back(self, row: dict[str, Any]) -> None:
        await self._write(functools.partial(store.release_claims, message_ids=[row["id"]]))

    async def _move(self, row: dict[str, Any], token: int, send_at: int) -> str:
        await self._write(
            functools.partial(
                store.reschedule,
                message_id=row["id"],
                token=token,
                send_at=send_at,
                now=now_ms(),
                failed=False,
            )
        )
        return "deferred"

    async def _not_sent(self, row: dict[str, Any], token: int, error: AppError | None) -> str:
        """Plivo certainly did not take it: back off, or give up once OUTBOX_GIVE_UP_HOURS
        have passed since the original sendAt."""
        now = now_ms()
        give_up_at = (row["scheduled_for"] or row["send_at"]) + int(
            self.settings.outbox_give_up_hours * 3600_000
        )
        keep_text = self.settings.store_message_text
        if now >= give_up_at:
            await self._write(
                functools.partial(
                    store.give_up,
                    message_id=row["id"],
                    token=token,
                    now=now,
                    keep_text=keep_text,
                    targets=self.db.webhooks,
                )
            )
            log.warning("outbox_gave_up", message_id=row["id"], attempts=row["attempts"] + 1)
            return MessageStatus.NOT_SENT.value
        retry_after = _retry_after(error) if error is not None else None
        send_at = min(now + backoff_ms(row["attempts"] + 1, retry_after), give_up_at)
        await self._write(
            functools.partial(
                store.reschedule,
                message_id=row["id"],
                token=token,
                send_at=send_at,
                now=now,
                failed=True,
            )
        )
        log.info(
            "outbox_retry",
            message_id=row["id"],
            error=error.code if error is not None else None,
            retry_in_s=round((send_at - now) / 1000, 1),
        )
        return "retry"

    async def _cancel(self, row: dict[str, Any], token: int, reason: str) -> str:
        await self._write(
            functools.partial(
                store.cancel_claimed,
                message_id=row["id"],
                token=token,
                reason=reason,
                now=now_ms(),
                keep_text=self.settings.store_message_text,
                targets=self.db.webhooks,
            )
        )
        return MessageStatus.CANCELED.value

    async def _lost(self, row: dict[str, Any], token: int) -> str:
        started: int = row["attempt_started_at"]
        await self._write(
            functools.partial(
                store.lost_attempt,
                message_id=row["id"],
                token=token,
                now=now_ms(),
                next_check_at=first_check_at(started, self.settings),
                keep_text=self.settings.store_message_text,
                targets=self.db.webhooks,
            )
        )
        log.warning("outbox_attempt_interrupted", message_id=row["id"])
        return "lost"
