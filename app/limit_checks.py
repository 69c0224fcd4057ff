"""Each limit check of a send in one storage call: one Lua script on Redis.

limits' strategies make one storage call per operation, so a send's three checks took six
Redis round trips (the per-IP hit and its window for the X-RateLimit-* headers; the
destination's window and the quota's counter, tested; then both counted) — about as much
CPU as the rest of the send. Here each check is one script: limits' own scripts
(`limits/resources/redis/lua_scripts`, limits pinned in pyproject.toml), run back to back
on the keys limits uses, so the data stays limits' and its own calls keep working on it
(decision 0021). In process memory the same checks call limits' storage methods directly,
one after the other: no round trip to save there.

Only a plain Redis (`redis://`, `rediss://`) is configurable, so two keys in one script
never span cluster slots.
"""

from __future__ import annotations

import time
from typing import Any, NamedTuple

from limits import RateLimitItem
from limits.aio.storage import MemoryStorage, RedisStorage, Storage

# limits' acquire_moving_window.lua (one entry) and moving_window.lua, as functions of a key.
_FUNCTIONS = """
local function acquire(key, timestamp, limit, expiry)
    if limit < 1 then
        return false
    end
    local entry = redis.call('lindex', key, limit - 1)
    if entry and tonumber(entry) >= timestamp - expiry then
        return false
    end
    redis.call('lpush', key, timestamp)
    redis.call('ltrim', key, 0, limit - 1)
    redis.call('expire', key, expiry)
    return true
end

local function window(key, target, len)
    local low, high, found = 0, len - 1, nil
    while low <= high do
        local mid = math.floor((low + high) / 2)
        local val = tonumber(redis.call('lindex', key, mid))
        if val and val >= target then
            found = mid
            low = mid + 1
        else
            high = mid - 1
        end
    end
    if found then
        return {tostring(tonumber(redis.call('lindex', key, found))), found + 1}
    end
    return {'', 0}
end

local timestamp = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local expiry = tonumber(ARGV[3])
"""

# KEYS[1]: a moving window. Count one hit, then read the window: {allowed, oldest, count}.
HIT_AND_WINDOW = (
    _FUNCTIONS
    + """
local allowed = acquire(KEYS[1], timestamp, limit, expiry)
local w = window(KEYS[1], timestamp - expiry, limit)
return {allowed and 1 or 0, w[1], w[2]}
"""
)

# KEYS[1]: a moving window, KEYS[2] (optional): a fixed-window counter. Read both, count
# nothing: {oldest, count, counter}.
TEST_BOTH = (
    _FUNCTIONS
    + """
local w = window(KEYS[1], timestamp - expiry, limit)
local used = 0
if KEYS[2] then
    used = tonumber(redis.call('get', KEYS[2]) or '0')
end
return {w[1], w[2], used}
"""
)

# KEYS[1]: a moving window, KEYS[2] (optional): a fixed-window counter whose window lasts
# ARGV[4] seconds (limits' incr_expire.lua). Count the hit in the window; only if it
# passed, add one to the counter: {allowed, oldest, count, counter}.
HIT_BOTH = (
    _FUNCTIONS
    + """
if not acquire(KEYS[1], timestamp, limit, expiry) then
    local w = window(KEYS[1], timestamp - expiry, limit)
    return {0, w[1], w[2], 0}
end
local used = 0
if KEYS[2] then
    used = redis.call('incrby', KEYS[2], 1)
    if tonumber(used) == 1 then
        redis.call('expire', KEYS[2], ARGV[4])
    end
end
return {1, '', 0, used}
"""
)


class Window(NamedTuple):
    allowed: bool
    start: float  # the oldest hit still in the window (now when it is empty)
    hits: int  # hits in the window


class Scripts:
    """The three scripts, registered on limits' Redis connection."""

    def __init__(self, storage: RedisStorage) -> None:
        bridge: Any = storage.bridge
        connection = bridge.get_connection()
        self.prefixed = bridge.prefixed_key
        self.hit_and_window = connection.register_script(HIT_AND_WINDOW)
        self.test_both = connection.register_script(TEST_BOTH)
        self.hit_both = connection.register_script(HIT_BOTH)


def _window(allowed: Any, oldest: Any, count: Any, now: float) -> Window:
    start = float(oldest) if oldest else now
    return Window(bool(int(allowed)), start, int(count))


async def hit_and_window(
    storage: Storage, scripts: Scripts | None, item: RateLimitItem, key: str
) -> Window:
    """One hit on a moving window, and the window afterwards (limits' `hit`, then
    `get_window_stats`)."""
    expiry, now = item.get_expiry(), time.time()
    if isinstance(storage, MemoryStorage) or scripts is None:
        allowed = await storage.acquire_entry(key, item.amount, expiry)  # type: ignore[attr-defined]
        start, count = await storage.get_moving_window(key, item.amount, expiry)  # type: ignore[attr-defined]
        return Window(allowed, start, count)
    allowed, oldest, count = await scripts.hit_and_window(
        [scripts.prefixed(key)], [now, item.amount, expiry]
    )
    return _window(allowed, oldest, count, now)


async def test_both(
    storage: Storage,
    scripts: Scripts | None,
    item: RateLimitItem,
    key: str,
    counter: str | None,
) -> tuple[Window, int]:
    """Would one more hit pass the moving window (limits' `test`), and the fixed-window
    counter's value (what limits' fixed-window `test` compares), counting nothing."""
    expiry, now = item.get_expiry(), time.time()
    if isinstance(storage, MemoryStorage) or scripts is None:
        start, count = await storage.get_moving_window(key, item.amount, expiry)  # type: ignore[attr-defined]
        used = await storage.get(counter) if counter is not None else 0
        return Window(count < item.amount, start, count), used
    keys = [scripts.prefixed(key)] + ([scripts.prefixed(counter)] if counter else [])
    oldest, count, used = await scripts.test_both(keys, [now, item.amount, expiry])
    window = _window(0, oldest, count, now)
    return window._replace(allowed=window.hits < item.amount), int(used)


async def hit_both(
    storage: Storage,
    scripts: Scripts | None,
    item: RateLimitItem,
    key: str,
    counter: str | None,
    counter_expiry: int,
) -> tuple[Window, int]:
    """One hit on the moving window (limits' `hit`) and, only if it passed, one on the
    fixed-window counter (limits' fixed-window `hit`: its new value). The window is read
    back only when the hit was refused (for Retry-After)."""
    expiry, now = item.get_expiry(), time.time()
    if isinstance(storage, MemoryStorage) or scripts is None:
        if not await storage.acquire_entry(key, item.amount, expiry):  # type: ignore[attr-defined]
            start, count = await storage.get_moving_window(key, item.amount, expiry)  # type: ignore[attr-defined]
            return Window(False, start, count), 0
        used = await storage.incr(counter, counter_expiry) if counter is not None else 0
        return Window(True, now, 0), used
    keys = [scripts.prefixed(key)] + ([scripts.prefixed(counter)] if counter else [])
    allowed, oldest, count, used = await scripts.hit_both(
        keys, [now, item.amount, expiry, counter_expiry]
    )
    return _window(allowed, oldest, count, now), int(used)
