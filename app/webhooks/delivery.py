"""Webhook delivery: a worker in every replica POSTs due events to their endpoints.

Deliveries are claimed like all background work (`app.worker`, `app.store.claims`): a
lease per row, so one replica at a time attempts an event. Each attempt is signed anew
with the `standardwebhooks` library (the attempt's time in `webhook-timestamp`, the same
`webhook-id` every time), sent through one shared aiohttp session with 10 s per attempt,
and a 2xx marks it delivered; otherwise it is due again on the retry schedule
(`app.webhooks.schedule`) or, after the last attempt, `failed`. At most `per_endpoint`
attempts run at once per endpoint, so a slow endpoint cannot take every slot; nothing on
the request path waits for a delivery. An attempt cut short (shutdown past the grace, a
crash) keeps its lease, which runs out, and the event is attempted again: at least once.
An endpoint's answer is read up to 1 KiB and never logged (it may echo the payload):
its status and the latency are.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import aiohttp
import orjson
from sqlalchemy.ext.asyncio import AsyncConnection
from standardwebhooks import Webhook

from app import __version__
from app.config import Settings
from app.logging import get_logger
from app.store import webhooks as store
from app.store.db import Database, FunctionOp
from app.webhooks.schedule import next_attempt_at
from app.worker import ClaimingWorker

log = get_logger("app.webhooks")
ATTEMPT_TIMEOUT_SECONDS = 10.0
LEASE_MS = 30_000  # an attempt's 10 s, its outcome's write, and a wide margin
MAX_RESPONSE_BYTES = 1024
CONCURRENCY = 128  # deliveries in progress per process (an attempt, then its outcome's write)
PER_ENDPOINT = 64  # of which one endpoint may hold at most this many
TEXT_KEPT_MS = 24 * 3600 * 1000  # inbound text in a pending delivery: erased after 24 h
BACKLOG_EVERY_SECONDS = 1.0  # metrics: the pending count at most this often
ERASE_EVERY_SECONDS = 60.0
USER_AGENT = f"mms-gateway/{__version__} (webhooks)"


def sign(signer: Webhook, delivery_id: str, body: bytes, at: float) -> dict[str, str]:
    """The Standard Webhooks headers of one attempt at `at` (epoch seconds)."""
    timestamp = datetime.fromtimestamp(int(at), UTC)
    return {
        "webhook-id": delivery_id,
        "webhook-timestamp": str(int(at)),
        "webhook-signature": signer.sign(delivery_id, timestamp, body.decode()),
    }


def body_of(row: dict[str, Any]) -> bytes:
    """The stored body; an inbound message's text (kept apart, erased once final or
    24 h old) goes back into `data.text` while it is there."""
    payload: str = row["payload"]
    if row.get("text") is None:
        return payload.encode()
    body = orjson.loads(payload)
    body["data"]["text"] = row["text"]
    return orjson.dumps(body)


class WebhookDelivery(ClaimingWorker):
    name = "webhooks"
    idle_poll_seconds = 1.0

    def __init__(
        self,
        db: Database,
        settings: Settings,
        *,
        clock: Callable[[], float] = time.time,
        uniform: Callable[[float, float], float] = random.uniform,
        concurrency: int = CONCURRENCY,
        per_endpoint: int = PER_ENDPOINT,
    ) -> None:
        super().__init__(db, concurrency=concurrency)
        secret = settings.webhook_secret
        self.signer = Webhook(secret.get_secret_value()) if secret else None
        self.urls = {endpoint.name: endpoint.url for endpoint in settings.webhooks}
        self.keep_text = settings.store_message_text
        self.clock = clock  # injectable: the retry schedule's tests move time on
        self.uniform = uniform
        self.per_endpoint = per_endpoint
        self._active: Counter[str] = Counter()  # attempts in flight per endpoint
        self._active_at_claim: Counter[str] = Counter()  # `_active` as the claim began
        self._capped = False  # the last claim left due rows behind for an endpoint's cap
        self._session: aiohttp.ClientSession | None = None
        self._next_report = 0.0
        self._next_erase = 0.0
        self.on_attempt: Any = None  # metrics hook: on_attempt(endpoint, outcome, seconds)
        self.on_backlog: Any = None  # metrics hook: on_backlog(pending, oldest_age_seconds)

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    def start(self) -> None:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self.concurrency, limit_per_host=0),
            timeout=aiohttp.ClientTimeout(total=ATTEMPT_TIMEOUT_SECONDS),
            headers={"User-Agent": USER_AGENT},
            trust_env=False,  # an endpoint is reached directly, as configured
        )
        super().start()

    async def stop(self, grace_seconds: float = 0.0) -> None:
        await super().stop(grace_seconds)
        if self._session is not None:
            await self._session.close()

    # Claims --------------------------------------------------------------------------------
    def can_claim(self) -> bool:
        # Snapshot on the event loop: on SQLite the claim runs in the writer's thread, while
        # attempts finishing on the loop change `_active`.
        self._active_at_claim = Counter(self._active)
        return True

    async def claim(self, conn: AsyncConnection, limit: int) -> list[dict[str, Any]]:
        """Due deliveries, at most `per_endpoint` in flight per endpoint: rows over an
        endpoint's cap are handed back at once and the claim goes on without it."""
        now, counts = self.now_ms(), Counter(self._active_at_claim)
        taken: list[dict[str, Any]] = []
        self._capped = False
        while len(taken) < limit:
            full = [name for name, count in counts.items() if count >= self.per_endpoint]
            self._capped = self._capped or bool(full)
            # No more rows than the configured endpoints can start (a removed endpoint's
            # rows are failed at once, so they take one slot of room).
            room = sum(max(0, self.per_endpoint - counts[name]) for name in self.urls) or 1
            batch = min(limit - len(taken), room)
            if not self.urls.keys() - set(full) and full:
                break  # every endpoint is at its cap: nothing to claim
            rows = await store.claim_due(
                conn, now=now, batch=batch, lease_ms=LEASE_MS, skip_endpoints=full
            )
            if len(rows) == batch < limit - len(taken):
                self._capped = True  # the endpoints' room, not the due rows, ended it
            over = []
            for row in rows:
                if counts[row["endpoint"]] < self.per_endpoint:
                    counts[row["endpoint"]] += 1
                    taken.append(row)
                else:
                    over.append(row["id"])
            if not over:
                break
            self._capped = True
            await store.release_claims(conn, over)
        return taken

    async def release(self, conn: AsyncConnection, rows: list[dict[str, Any]]) -> None:
        await store.release_claims(conn, [row["id"] for row in rows])

    async def after_claim(self) -> None:
        now = time.monotonic()
        if not self.keep_text and now >= self._next_erase:
            self._next_erase = now + ERASE_EVERY_SECONDS
            before = self.now_ms() - TEXT_KEPT_MS
            await self.db.write(FunctionOp(lambda c: store.erase_old_text(c, before=before)))
        if self.on_backlog is not None and now >= self._next_report:
            self._next_report = now + BACKLOG_EVERY_SECONDS
            async with self.db.read() as conn:
                pending, oldest = await store.backlog(conn)
            age = max(0.0, (self.now_ms() - oldest) / 1000) if oldest is not None else 0.0
            self.on_backlog(pending, age)

    # One attempt ---------------------------------------------------------------------------
    async def handle(self, row: dict[str, Any]) -> None:
        endpoint = row["endpoint"]
        self._active[endpoint] += 1  # before any await: the next claim sees it
        freed = False

        def free_endpoint() -> None:
            """The endpoint's slot is free once its answer is in (the outcome's write
            does not hold it). Rows held back by its cap are claimed once half of the
            slots are free: in batches, not one claim per finished attempt."""
            nonlocal freed
            if not freed:
                freed = True
                self._active[endpoint] -= 1
                if self._capped and self._active[endpoint] <= self.per_endpoint // 2:
                    self.wake()

        try:
            await self._deliver(row, free_endpoint)
        finally:
            free_endpoint()

    async def _deliver(self, row: dict[str, Any], free_endpoint: Callable[[], None]) -> None:
        endpoint, attempt = row["endpoint"], row["attempts"] + 1
        url = self.urls.get(endpoint)
        if url is None or self.signer is None or self._session is None:
            # WEBHOOKS no longer names this endpoint: failed at once (retry re-queues it).
            reason, now = "endpoint not configured", self.now_ms()
            await self.db.write(
                FunctionOp(lambda c: store.give_up(c, row["id"], row["claimed_until"], reason, now))
            )
            log.warning("webhook_failed", delivery_id=row["id"], endpoint=endpoint, error=reason)
            return
        body = body_of(row)
        headers = {
            **sign(self.signer, row["id"], body, self.clock()),
            "Content-Type": "application/json",
        }
        started = time.perf_counter()
        status: int | None = None
        error: str | None = None
        try:
            async with self._session.post(
                url, data=body, headers=headers, allow_redirects=False
            ) as response:
                status = response.status
                await response.content.read(MAX_RESPONSE_BYTES)  # read, bounded, never logged
        except TimeoutError:
            error = f"no answer within {ATTEMPT_TIMEOUT_SECONDS:g} s"
        except (aiohttp.ClientError, OSError) as exc:
            if status is None:  # an answer cut off after its status still counts by status
                error = f"connection failed ({type(exc).__name__})"
        if error is None and status is not None and not 200 <= status < 300:
            error = f"HTTP {status}"
        seconds = time.perf_counter() - started
        free_endpoint()
        now = self.now_ms()
        later = None if error is None else next_attempt_at(attempt, now, self.uniform)
        finish = store.FinishAttempt(
            delivery_id=row["id"],
            lease=row["claimed_until"],
            attempts=attempt,
            next_attempt_at=later,
            delivered=error is None,
            error=error,
            now=now,
            keep_text=self.keep_text,
        )
        await self.db.write(finish)
        outcome = "delivered" if error is None else ("retry" if later else "failed")
        if self.on_attempt is not None:
            self.on_attempt(endpoint, outcome, seconds)
        fields = {
            "delivery_id": row["id"],
            "endpoint": endpoint,
            "type": row["type"],
            "attempt": attempt,
            "status": status,
            "latency_ms": round(seconds * 1000, 1),
        }
        if error is None:
            log.info("webhook_delivered", **fields)
        elif later is not None:
            log.warning(
                "webhook_attempt_failed", error=error, retry_in_s=(later - now) // 1000, **fields
            )
        else:
            log.error("webhook_failed", error=error, **fields)
