"""The pacer: never ask Plivo for more than SEND_RATE sends, fleet-wide with Redis.

A reservation-style GCRA (generic cell rate algorithm). The state is one number, the
theoretical arrival time (TAT): when the next send would be due if sends came exactly at
the rate. A send asks "when is my slot?", gets an answer — a delay from now — and sleeps
that long; it never polls, and slots are handed out in the order they were asked for.
A burst of one second's worth (at least 1) is allowed at once: the tolerance is
(burst - 1) emission intervals.

    now       = the clock                          interval  = 1 / rate
    tat       = max(stored TAT, now)               tolerance = (burst - 1) * interval
    delay     = max(0, tat - tolerance - now)
    delay > max_wait -> refused, nothing stored (no slot held); the answer is the delay
    otherwise        -> stored TAT = tat + interval; sleep `delay`, then send

Time is kept in integer microseconds on both backends, so they compute the same answers
and a burst within the rate never waits because of a rounding error.

Backends: per process (memory, with an injectable clock for the tests), or fleet-wide on
Redis when the limits use Redis — one Lua script per send (one round trip) that reads
Redis' own clock (`TIME`), so replicas' clocks never matter, and answers a delay, not an
absolute time. When Redis fails, sends pace per process through the limits' own fallback
(`LimitStore.run`: one `degraded` flag, one retry timer, the same metrics).

Why our own: no well-kept library offers a reservation with "refuse beyond max wait and
hold no slot" on Redis' clock; see docs/decisions/0013-gcra-pacer.md.
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from limits.aio.storage import MemoryStorage

from app.errors import SendRateExceeded
from app.ratelimit import REDIS_TIMEOUT_SECONDS, LimitStore

MICROS = 1_000_000
UNITS = {"second": 1, "minute": 60, "hour": 3600}
_RATE = re.compile(r"(\d+(?:\.\d+)?|\.\d+)/(second|minute|hour)")
MAX_RATE_PER_SECOND = 1_000_000  # an emission interval of at least 1 µs
REDIS_KEY = "mms-gateway:pacer"


def parse_rate(value: str) -> float:
    """`0` (off) or `<decimal>/<second|minute|hour>` -> sends per second (0.0 = off)."""
    text = value.strip().lower().replace(" ", "")
    if text == "0":
        return 0.0
    match = _RATE.fullmatch(text)
    if match is None:
        raise ValueError(
            "must be 0 (off) or <decimal>/<second|minute|hour>, e.g. 50/second or 0.25/second"
        )
    per_second = float(match.group(1)) / UNITS[match.group(2)]
    if per_second <= 0:
        raise ValueError("must be positive; use 0 to turn pacing off")
    if per_second > MAX_RATE_PER_SECOND:
        raise ValueError(f"must be at most {MAX_RATE_PER_SECOND}/second")
    return per_second


@dataclass(frozen=True, slots=True)
class Rate:
    """A rate as the GCRA uses it: microseconds between slots and the burst tolerance."""

    interval_us: int
    tolerance_us: int

    @classmethod
    def per_second(cls, rate: float) -> Rate:
        interval = max(1, round(MICROS / rate))
        burst = max(1, math.floor(rate))  # one second's worth, at least 1
        return cls(interval, (burst - 1) * interval)


@dataclass(frozen=True, slots=True)
class Reservation:
    """`granted`: a slot is yours in `delay` seconds. Refused: no slot is held, and a slot
    would be free in `delay` seconds."""

    granted: bool
    delay: float


class MemoryGcra:
    """The GCRA in this process. `reserve` has no await inside: atomic under asyncio."""

    def __init__(self, rate: Rate, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self._clock = clock
        self._tat = 0  # µs of `clock`; 0 is "long ago" for a monotonic clock

    def reserve(self, max_wait: float | None) -> Reservation:
        now = int(self._clock() * MICROS)
        tat = max(self._tat, now)
        delay = max(0, tat - self.rate.tolerance_us - now)
        if max_wait is not None and delay > max_wait * MICROS:
            return Reservation(False, delay / MICROS)
        self._tat = tat + self.rate.interval_us
        return Reservation(True, delay / MICROS)


# KEYS[1]: the TAT in µs of Redis' clock. ARGV: interval µs, tolerance µs, max wait µs
# (-1: no limit). Returns {granted (1/0), delay µs}. Integers throughout: Lua numbers
# are doubles (exact to 2^53, far above µs since 1970) and replies are truncated to
# integers; `%.0f` keeps SET from writing the TAT in exponent notation.
GCRA_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local max_wait = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local delay = tat - tolerance - now
if delay < 0 then delay = 0 end
if max_wait >= 0 and delay > max_wait then
  return {0, delay}
end
local new_tat = tat + interval
-- The state means nothing once its TAT has passed: let it expire then.
redis.call('SET', KEYS[1], string.format('%.0f', new_tat),
  'PX', math.floor((new_tat - now) / 1000) + 1)
return {1, delay}
"""


class RedisGcra:
    """The GCRA on Redis: one script call (one round trip) per reservation."""

    def __init__(self, url: str, rate: Rate, key: str = REDIS_KEY) -> None:
        from redis.asyncio import Redis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        self.rate = rate
        self.key = key
        # Fail fast like the limits' client (the fallback is the retry), but retry once at
        # once: after Redis restarts, the first call meets a pooled connection that Redis
        # closed, and that failure would put the limits back on memory for every replica.
        self.client: Any = Redis.from_url(
            url,
            socket_timeout=REDIS_TIMEOUT_SECONDS,
            socket_connect_timeout=REDIS_TIMEOUT_SECONDS,
            retry=Retry(NoBackoff(), 1),
        )
        self._script = self.client.register_script(GCRA_SCRIPT)

    async def reserve(self, max_wait: float | None) -> Reservation:
        limit = -1 if max_wait is None else int(max_wait * MICROS)
        args = (self.rate.interval_us, self.rate.tolerance_us, limit)
        granted, delay = await self._script(keys=[self.key], args=args)
        return Reservation(bool(granted), int(delay) / MICROS)

    async def aclose(self) -> None:
        await self.client.aclose()


class Pacer:
    """One pace toward Plivo: fleet-wide on Redis, else (or while Redis fails) per process.

    `local_rate` is what this process may use on its own: SEND_RATE divided by the
    worker processes of this replica, so `memory://` with several workers still adds up
    to SEND_RATE.
    """

    def __init__(
        self,
        local: MemoryGcra,
        *,
        redis: RedisGcra | None = None,
        store: LimitStore | None = None,
        on_wait: Callable[[float], None] | None = None,
        on_refuse: Callable[[], None] | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if redis is not None and store is None:
            raise ValueError("a Redis pacer needs the limit store's fallback")
        self.local = local
        self.redis = redis
        self.store = store
        self._on_wait = on_wait  # metrics: seconds waited by each granted send (0 included)
        self._on_refuse = on_refuse  # metrics: a sync send refused
        self._sleep = sleep

    @classmethod
    def build(
        cls,
        rate_per_second: float,
        *,
        workers: int,
        store: LimitStore,
        on_wait: Callable[[float], None] | None = None,
        on_refuse: Callable[[], None] | None = None,
    ) -> Pacer | None:
        """The pacer for these settings; None when SEND_RATE is 0 (off)."""
        if rate_per_second <= 0:
            return None
        local = MemoryGcra(Rate.per_second(rate_per_second / workers))
        redis = None
        if store.url.startswith(("redis://", "rediss://")):
            redis = RedisGcra(store.url, Rate.per_second(rate_per_second))
        return cls(local, redis=redis, store=store, on_wait=on_wait, on_refuse=on_refuse)

    async def reserve(self, max_wait: float | None) -> Reservation:
        """Take a slot within `max_wait` seconds (None: any), or learn when one is free."""
        redis, store = self.redis, self.store
        if redis is None or store is None:
            return self.local.reserve(max_wait)

        async def on(storage: object) -> Reservation:
            # LimitStore.run hands over its Redis storage, or its memory one on fallback.
            if isinstance(storage, MemoryStorage):
                return self.local.reserve(max_wait)
            return await redis.reserve(max_wait)

        return await store.run(on)

    async def reserve_shared(self, max_wait: float) -> Reservation | None:
        """The outbox's reservation: a slot only if its wait is at most `max_wait` (so a
        backlog keeps the queue short and synchronous sends still find slots), in one
        round trip. None while the fleet-wide pace is unavailable (Redis down): N replicas
        pacing alone would send at N times the rate, so the outbox pauses instead of
        falling back as synchronous sends do."""
        redis = self.redis
        reservation: Reservation | None
        if redis is None:
            reservation = self.local.reserve(max_wait)
        else:
            # Straight to Redis, not through the limits' fallback: that one stays on memory
            # for seconds after a single timeout, and the outbox would stand still as long.
            try:
                reservation = await redis.reserve(max_wait)
            except Exception:  # down, or too slow: the caller pauses and asks again soon
                reservation = None
        if reservation is not None and reservation.granted and self._on_wait:
            self._on_wait(reservation.delay)
        return reservation

    async def take(self, max_wait: float) -> None:
        """A synchronous send's slot: wait for it, or 503 `send_rate_exceeded` at once."""
        reservation = await self.reserve(max_wait)
        if not reservation.granted:
            if self._on_refuse:
                self._on_refuse()
            raise SendRateExceeded(
                "Sends toward Plivo are at the configured rate (SEND_RATE); retry later.",
                headers={"Retry-After": str(max(1, math.ceil(reservation.delay)))},
            )
        if self._on_wait:
            self._on_wait(reservation.delay)
        if reservation.delay > 0:
            await self._sleep(reservation.delay)

    async def aclose(self) -> None:
        if self.redis is not None:
            await self.redis.aclose()
