"""Rate limits and the daily quota, on `limits.aio` (moving window; Redis or memory).

Why not slowapi, the design's first choice (checked in slowapi 0.1.10's code): its
storage calls are synchronous, so every Redis round trip blocks the event loop; its ASGI
middleware turns any storage error into a 500 on every route; it walks every route per
request and buffers each response start. `limits.aio` — the library slowapi itself is
built on — has async Redis storages and the same moving-window algorithm, so the limits
here are `limits`' own; only the fallback and the HTTP plumbing are ours.
"""

from __future__ import annotations

import asyncio
import bisect
import functools
import ipaddress
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from limits import RateLimitItem, RateLimitItemPerDay, parse
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import FixedWindowRateLimiter, MovingWindowRateLimiter
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app import limit_checks
from app.errors import (
    DestinationRateLimited,
    QuotaExceeded,
    RateLimited,
    problem_response,
)
from app.logging import get_logger
from app.paths import SEND_PATH

log = get_logger("app.ratelimit")
T = TypeVar("T")

REDIS_TIMEOUT_SECONDS = 0.25
REDIS_RETRY_AFTER_SECONDS = 5.0
PING_CACHE_SECONDS = 2.0  # /ready pings Redis at most this often
DAY_SECONDS = RateLimitItemPerDay(1).get_expiry()  # the daily quota's window, as limits sets it


class QuietMemoryStorage(MemoryStorage):
    """limits' async MemoryStorage with cheap housekeeping; the counting is limits' own.

    Upstream (limits 5.8) starts a new sweep of *every* key as soon as the previous one
    ends, and hands each key's bisect to `asyncio.to_thread`: with the benchmark's 11,000
    keys (10,000 clients, 1,000 destinations) that sweep was about a third of the service's
    CPU. Here expired entries are swept inline, at most every few seconds. Expiry is only
    housekeeping: a moving window ignores entries older than its period either way.
    """

    SWEEP_INTERVAL_SECONDS = 5.0
    _next_sweep = 0.0

    # Overrides the base class's private `__schedule_expiry`, called before every hit: limits
    # has no public way to change its housekeeping. Hence limits is pinned to one version
    # (pyproject.toml), and tests/test_ratelimit.py fails if an upgrade renames the method.
    async def _MemoryStorage__schedule_expiry(self) -> None:
        now = time.monotonic()
        if now >= self._next_sweep:
            self._next_sweep = now + self.SWEEP_INTERVAL_SECONDS
            self._sweep()

    def _sweep(self) -> None:
        """Drop expired moving-window entries and fixed-window counters (no await inside)."""
        now = time.time()
        for key, entries in list(self.events.items()):
            # Entries are newest first, so expiries descend: keep the unexpired prefix. Most
            # keys are all live or all expired: their ends tell, without a search.
            if entries and entries[-1].expiry > now:
                continue
            if not entries or entries[0].expiry <= now:
                keep = 0
            else:
                keep = bisect.bisect_left(entries, -now, key=lambda entry: -entry.expiry)
            if keep:
                self.events[key] = entries[:keep]
            else:
                del self.events[key]
                self.locks.pop(key, None)
        for key, expiry in list(self.expirations.items()):
            if expiry <= now:
                self.storage.pop(key, None)
                del self.expirations[key]
                self.locks.pop(key, None)


def _unwrapped(function: Any) -> Any:
    while hasattr(function, "__wrapped__"):
        function = function.__wrapped__
    return function


# limits wraps every storage method, once per class of the hierarchy that declares it, in a
# handler that only re-raises unless `wrap_exceptions` is on (it is off here): the moving
# window's two methods reach this class under four such layers, a coroutine frame each.
# Process memory raises no driver error, so the library's own functions run bare.
for _name in ("acquire_entry", "get_moving_window", "incr", "get", "get_expiry", "clear"):
    setattr(QuietMemoryStorage, _name, _unwrapped(getattr(QuietMemoryStorage, _name)))


KEYS_REMEMBERED = 20_000  # per limit; then forgotten all at once and rebuilt as needed


@functools.cache
def _remembering(base: type[RateLimitItem]) -> type[RateLimitItem]:
    """`base` (a limits item class) whose storage keys are remembered: limits rebuilds a
    key from its parts (escaped and joined) for every storage call, six per send, though
    it depends on the identifiers alone."""

    class Remembering(base):  # type: ignore[valid-type,misc]
        __slots__ = ("_keys",)  # no GRANULARITY here: limits does not register the class

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._keys: dict[tuple[Any, ...], str] = {}

        def key_for(self, *identifiers: Any) -> str:
            key = self._keys.get(identifiers)
            if key is None:
                if len(self._keys) >= KEYS_REMEMBERED:
                    self._keys.clear()
                key = self._keys[identifiers] = super().key_for(*identifiers)
            return key

    return Remembering


def remembering_keys(item: RateLimitItem) -> RateLimitItem:
    """The same limit (amount, period, namespace), its storage keys remembered."""
    return _remembering(type(item))(item.amount, item.multiples, item.namespace)


_day_cache: tuple[float, str, float] = (0.0, "", 0.0)


def _utc_day() -> tuple[str, float]:
    """Today's UTC date and the epoch of the next midnight (recomputed once a day)."""
    global _day_cache
    now = time.time()
    if now >= _day_cache[0]:
        today = datetime.fromtimestamp(now, UTC)
        midnight = (today + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
        _day_cache = (midnight.timestamp(), today.strftime("%Y-%m-%d"), midnight.timestamp())
    return _day_cache[1], _day_cache[2]


@dataclass(frozen=True, slots=True)
class Verdict:
    allowed: bool
    limit: int
    remaining: int
    reset_at: float  # epoch seconds when a slot frees up

    def headers(self) -> list[tuple[bytes, bytes]]:
        """X-RateLimit-* of the per-client limit (and Retry-After when refused)."""
        headers = [
            (b"x-ratelimit-limit", str(self.limit).encode()),
            (b"x-ratelimit-remaining", str(max(0, self.remaining)).encode()),
            (b"x-ratelimit-reset", str(math.ceil(self.reset_at)).encode()),
        ]
        if not self.allowed:
            headers.append((b"retry-after", str(self.retry_after).encode()))
        return headers

    @property
    def retry_after(self) -> int:
        return max(1, math.ceil(self.reset_at - time.time()))


class LimitStore:
    """One storage for every limit, falling back to process memory when Redis fails.

    When Redis fails, counting continues in process memory (each replica counts alone),
    `degraded` is True for /ready, and Redis is tried again every few seconds.
    """

    def __init__(
        self,
        url: str,
        *,
        on_fallback: Callable[[], None] | None = None,
        on_recovered: Callable[[], None] | None = None,
    ) -> None:
        self.url = url
        self._memory: Storage = QuietMemoryStorage()
        self._redis: Storage | None = None
        if url.startswith(("redis://", "rediss://")):
            from redis.asyncio.retry import Retry
            from redis.backoff import NoBackoff

            self._redis = RedisStorage(
                f"async+{url}",
                implementation="redispy",
                key_prefix="mms-gateway",
                socket_timeout=REDIS_TIMEOUT_SECONDS,
                socket_connect_timeout=REDIS_TIMEOUT_SECONDS,
                retry=Retry(NoBackoff(), 0),  # type: ignore[arg-type]  # fail fast; the fallback is the retry
            )
        # A send's checks, one storage call each (app/limit_checks.py).
        self._scripts = limit_checks.Scripts(self._redis) if self._redis is not None else None
        storages: list[Storage] = [s for s in (self._memory, self._redis) if s is not None]
        self._moving: dict[Storage, MovingWindowRateLimiter] = {
            s: MovingWindowRateLimiter(s) for s in storages
        }
        self._fixed: dict[Storage, FixedWindowRateLimiter] = {
            s: FixedWindowRateLimiter(s) for s in storages
        }
        self._on_fallback = on_fallback  # metrics: each time Redis failed and memory counted
        self._on_recovered = on_recovered  # metrics: Redis answered again
        self._redis_down_until = 0.0
        self.degraded = False
        self._ping_ok = True
        self._ping_until = 0.0
        self._ping_lock = asyncio.Lock()
        self._daily_items: dict[int, RateLimitItem] = {}

    async def run(self, operation: Callable[[Storage], Awaitable[T]]) -> T:
        redis = self._redis
        if redis is not None and time.monotonic() >= self._redis_down_until:
            try:
                result = await operation(redis)
            except Exception as exc:
                self._redis_down_until = time.monotonic() + REDIS_RETRY_AFTER_SECONDS
                if not self.degraded:
                    log.error("rate_limit_storage_down", error=type(exc).__name__)
                self.degraded = True
                if self._on_fallback:
                    self._on_fallback()
            else:
                if self.degraded:
                    log.warning("rate_limit_storage_recovered")
                    self.degraded = False
                    if self._on_recovered:
                        self._on_recovered()
                return result
        return await operation(self._memory)

    async def reachable(self) -> bool:
        """Whether the configured Redis answers a PING (True without Redis), for /ready.

        Asked of Redis at most every PING_CACHE_SECONDS, with the storage's short timeout,
        so a Redis that is down shows at the first probe, not only after a send failed.
        """
        redis = self._redis
        if redis is None:
            return True
        if time.monotonic() < self._ping_until:
            return self._ping_ok
        async with self._ping_lock:  # concurrent probes share one PING
            if time.monotonic() >= self._ping_until:
                try:
                    async with asyncio.timeout(REDIS_TIMEOUT_SECONDS * 2):
                        self._ping_ok = await redis.check()
                except TimeoutError:
                    self._ping_ok = False
                self._ping_until = time.monotonic() + PING_CACHE_SECONDS
        return self._ping_ok

    async def moving_hit(
        self, item: RateLimitItem, *key: str, stats: bool = True, count: bool = True
    ) -> Verdict:
        """Count one hit (`count=False`: only test whether one would pass). `stats=False`:
        the window is read only when refused (for Retry-After) — callers that send no
        X-RateLimit-* headers save a round trip."""

        async def hit(storage: Storage) -> Verdict:
            limiter = self._moving[storage]
            allowed = await (limiter.hit if count else limiter.test)(item, *key)
            if allowed and not stats:
                return Verdict(True, item.amount, 0, 0.0)
            window = await limiter.get_window_stats(item, *key)
            return Verdict(allowed, item.amount, window.remaining, window.reset_time)

        return await self.run(hit)

    def _daily_item(self, amount: int) -> RateLimitItem:
        item = self._daily_items.get(amount)
        if item is None:
            item = self._daily_items[amount] = remembering_keys(RateLimitItemPerDay(amount))
        return item

    async def daily_hit(self, amount: int, *key: str, count: bool = True) -> Verdict:
        """Fixed window per UTC calendar day: the date is part of the key."""
        day, midnight = _utc_day()
        item = self._daily_item(amount)
        day_key = (*key, day)

        async def hit(storage: Storage) -> Verdict:
            limiter = self._fixed[storage]
            allowed = await (limiter.hit if count else limiter.test)(item, *day_key)
            return Verdict(allowed, amount, 0, midnight)

        return await self.run(hit)

    async def hit_with_window(self, item: RateLimitItem, *key: str) -> Verdict:
        """`moving_hit` with its window, in one storage call (one script on Redis)."""
        limit_key = item.key_for(*key)

        async def check(storage: Storage) -> Verdict:
            window = await limit_checks.hit_and_window(storage, self._scripts, item, limit_key)
            reset_at = window.start + item.get_expiry()
            return Verdict(window.allowed, item.amount, item.amount - window.hits, reset_at)

        return await self.run(check)

    async def moving_and_daily(
        self,
        item: RateLimitItem,
        key: tuple[str, ...],
        daily: int,
        daily_key: tuple[str, ...],
        *,
        count: bool,
    ) -> tuple[Verdict, Verdict | None]:
        """A moving window and a daily counter (`daily`=0: none) in one storage call:
        tested (`count=False`: would one more pass each?), or counted — the counter only
        when the window took the hit. A window that refuses comes with its Retry-After."""
        limit_key = item.key_for(*key)
        day, midnight = _utc_day()
        daily_item = self._daily_item(daily) if daily else None
        counter = daily_item.key_for(*daily_key, day) if daily_item is not None else None

        async def check(storage: Storage) -> tuple[Verdict, Verdict | None]:
            if count:
                window, used = await limit_checks.hit_both(
                    storage, self._scripts, item, limit_key, counter, DAY_SECONDS
                )
                quota_left = used <= daily
            else:
                window, used = await limit_checks.test_both(
                    storage, self._scripts, item, limit_key, counter
                )
                quota_left = used < daily
            reset_at = window.start + item.get_expiry()
            verdict = Verdict(window.allowed, item.amount, item.amount - window.hits, reset_at)
            if counter is None or not window.allowed:
                return verdict, None
            return verdict, Verdict(quota_left, daily, 0, midnight)

        return await self.run(check)

    async def reset(self) -> None:
        await self._memory.reset()
        if self._redis is not None:
            await self._redis.reset()


class Limits:
    """The three limits of the send route."""

    def __init__(
        self,
        store: LimitStore,
        *,
        per_ip: str,
        per_destination: str,
        daily_quota: int,
        on_reject: Callable[[str], None] | None = None,
    ) -> None:
        self.store = store
        self.per_ip = remembering_keys(parse(per_ip))
        self.per_destination = remembering_keys(parse(per_destination))
        self.daily_quota = daily_quota
        self.on_reject = on_reject  # metrics: the scope refused, `ip`, `destination`, `quota`

    async def check_client(self, client: str) -> Verdict:
        return await self.store.hit_with_window(self.per_ip, "ip", client)

    async def test_send(self, *, destination: str, caller: str) -> None:
        """Per-destination limit and the caller's daily quota, tested (not counted); raises
        when either is spent. Both are tested before either is counted, so one refusing
        does not use up the other; a send waits for its pacing slot after this test."""
        destination_left, quota_left = await self.store.moving_and_daily(
            self.per_destination,
            ("dst", destination),
            self.daily_quota,
            ("quota", caller),
            count=False,
        )
        for verdict, scope in ((destination_left, "destination"), (quota_left, "quota")):
            if verdict is not None and not verdict.allowed:
                self._refuse(scope, verdict)

    async def count_send(self, *, destination: str, caller: str) -> None:
        """Count the send in both; raises when a race spent one since `test_send`.

        Called by the sender once the send holds a concurrency slot and the breaker let it
        through — only sends that go on toward Plivo count. (Between the test and the hit
        another replica may slip in: then this send is refused, having counted the other
        limit once — a bounded over-count, never an extra send.)
        """
        destination_left, quota_left = await self.store.moving_and_daily(
            self.per_destination,
            ("dst", destination),
            self.daily_quota,
            ("quota", caller),
            count=True,
        )
        if not destination_left.allowed:  # the quota was not counted then
            self._refuse("destination", destination_left)
        if quota_left is not None and not quota_left.allowed:
            self._refuse("quota", quota_left)

    async def count_quota(self, *, caller: str) -> None:
        """An asynchronous send's quota, counted when it is accepted (it caps what a key
        can schedule); raises `quota_exceeded` when it is used up."""
        if self.daily_quota:
            verdict = await self.store.daily_hit(self.daily_quota, "quota", caller)
            if not verdict.allowed:
                self._refuse("quota", verdict)

    async def destination_wait(self, destination: str) -> int:
        """Seconds until the per-destination limit lets one more send through (0: now).
        The outbox moves a message's sendAt by this instead of refusing it."""
        verdict = await self.store.moving_hit(
            self.per_destination, "dst", destination, stats=False, count=False
        )
        return 0 if verdict.allowed else verdict.retry_after

    async def count_destination(self, *, destination: str) -> None:
        """Count an outbox send in the per-destination limit (its quota was counted at
        acceptance); raises `destination_rate_limited` when a race spent it since."""
        verdict = await self.store.moving_hit(self.per_destination, "dst", destination, stats=False)
        if not verdict.allowed:
            self._refuse("destination", verdict)

    def _refuse(self, scope: str, verdict: Verdict) -> None:
        if self.on_reject:
            self.on_reject(scope)
        if scope == "destination":
            raise DestinationRateLimited(
                "Too many messages to this number; retry later.",
                headers={"Retry-After": str(verdict.retry_after)},
            )
        raise QuotaExceeded(
            "This API key's daily quota is used up until midnight UTC.",
            headers={"Retry-After": str(verdict.retry_after)},
        )


def client_key(host: str) -> str:
    """The per-IP bucket of a client address: IPv4 as is, IPv6 by its /64.

    One IPv6 subscriber (a home, a VM) routinely holds a whole /64, so a bucket per
    address would give one client 2^64 buckets. An IPv4-mapped IPv6 address
    (`::ffff:192.0.2.1`, a dual-stack socket) is its IPv4 address. Anything that is not an
    address (no client, a proxy's odd value) is its own bucket.
    """
    if ":" not in host:
        return host  # IPv4 (the common case): no parsing on the hot path
    try:
        address = ipaddress.IPv6Address(host)
    except ValueError:
        return host
    if address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(ipaddress.IPv6Network((int(address) >> 64 << 64, 64)))


class ClientRateLimitMiddleware:
    """Per-client-IP limit on the send route, counted before routing and validation.

    Every request to the path counts — valid or not, authenticated or not — so a flood of
    bad requests is still a flood. The client address is `scope["client"]`, which uvicorn's
    proxy-headers middleware sets from X-Forwarded-For only for FORWARDED_ALLOW_IPS peers.
    """

    def __init__(self, app: ASGIApp, limits: Limits) -> None:
        self.app = app
        self.limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != SEND_PATH:
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        verdict = await self.limits.check_client(client_key(client[0]) if client else "unknown")
        if not verdict.allowed:
            if self.limits.on_reject:
                self.limits.on_reject("ip")
            error = RateLimited(
                "Too many requests from this client; retry later.",
                headers={k.decode(): v.decode() for k, v in verdict.headers()},
            )
            state = scope.setdefault("state", {})
            state["route"] = SEND_PATH  # refused before routing: name the route for the log
            state["code"] = error.code
            await problem_response(error, state.get("request_id", "-"))(scope, receive, send)
            return
        extra = verdict.headers()

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), *extra]
            await send(message)

        await self.app(scope, receive, send_with_headers)
