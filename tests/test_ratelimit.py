"""Limits: per client IP (every request), per destination and per key per day (real sends)."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

import pytest

from tests import fakeplivo as fp
from tests.helpers import API_KEYS, KEY_A, KEY_B, VALID, asgi_client
from tests.server import free_port

A = {"X-API-Key": KEY_A}
B = {"X-API-Key": KEY_B}


@pytest.fixture(params=["memory", "redis"])
def storage_url(request):
    if request.param == "memory":
        return "memory://"
    return request.getfixturevalue("redis_url")


async def test_per_ip_limit_counts_bad_and_unauthenticated_requests(
    settings_factory, client_for, storage_url, fake_plivo
):
    """3/minute: a 422 and a 401 use up the budget like a good send; the 4th is 429."""
    settings = settings_factory(
        rate_limit="3/minute", api_keys=API_KEYS, rate_limit_storage_url=storage_url
    )
    async with client_for(settings) as client:
        assert (await client.post("/api/mms/send", json={}, headers=A)).status_code == 422
        assert (await client.post("/api/mms/send", json=VALID)).status_code == 401
        ok = await client.post("/api/mms/send", json=VALID, headers=A)
        assert ok.status_code == 200
        assert ok.headers["x-ratelimit-limit"] == "3"
        assert ok.headers["x-ratelimit-remaining"] == "0"
        limited = await client.post("/api/mms/send", json=VALID, headers=A)
    assert limited.status_code == 429
    body = limited.json()
    assert body["code"] == "rate_limited" and body["status"] == 429
    assert limited.headers["content-type"] == "application/problem+json"
    assert 1 <= int(limited.headers["retry-after"]) <= 60
    assert int(limited.headers["x-ratelimit-reset"]) >= int(time.time())
    assert len(fake_plivo.sends()) == 1


async def test_other_clients_and_routes_are_not_limited(settings_factory, client_for, fake_plivo):
    settings = settings_factory(rate_limit="1/minute")
    async with client_for(settings) as client:
        assert (await client.post("/api/mms/send", json=VALID)).status_code == 200
        assert (await client.post("/api/mms/send", json=VALID)).status_code == 429
        for _ in range(5):
            assert (await client.get("/health")).status_code == 200
            assert (await client.get("/openapi.json")).status_code == 200
        async with asgi_client(client.app_running, "10.0.0.7") as other:
            assert (await other.post("/api/mms/send", json=VALID)).status_code == 200


async def test_moving_window_never_lets_more_than_n_through(
    settings_factory, client_for, storage_url, fake_plivo
):
    """Across a window edge no window-length period holds more than N successes.

    A fixed window would let a burst at the end of one window and another at the start
    of the next through (2N in a short period); the moving window does not.
    """
    n, window = 4, 1.0
    settings = settings_factory(
        rate_limit=f"{n}/second",
        rate_limit_storage_url=storage_url,
        rate_limit_per_destination="1000/hour",
    )
    passed: list[tuple[float, float]] = []  # (sent, answered) of each success

    async def send(client) -> None:
        sent = time.monotonic()
        response = await client.post("/api/mms/send", json=VALID)
        assert response.status_code in (200, 429)
        if response.status_code == 200:
            passed.append((sent, time.monotonic()))

    async with client_for(settings) as client:
        # One request opens the window; then a steady stream from just before its edge
        # to well after it — where a fixed window lets a second burst through at once.
        await send(client)
        await asyncio.sleep(window * 0.9)
        stop = time.monotonic() + window * 1.5
        while time.monotonic() < stop:
            await send(client)
            await asyncio.sleep(0.02)
    assert len(passed) >= n + 1  # the limit did let traffic through in the next window
    for i, (first_sent, _) in enumerate(passed):
        # Certainly inside one window: answered less than `window` after the first was sent.
        in_window = [answered for _, answered in passed[i:] if answered - first_sent < window]
        assert len(in_window) <= n, (i, in_window)


async def test_redis_unreachable_falls_back_to_memory(settings_factory, client_for, fake_plivo):
    """Limits go on in process memory, sends go on, the store reports degraded."""
    url = f"redis://127.0.0.1:{free_port()}/0"
    settings = settings_factory(rate_limit="2/minute", rate_limit_storage_url=url)
    async with client_for(settings) as client:
        statuses = [(await client.post("/api/mms/send", json=VALID)).status_code for _ in range(3)]
        assert client.services.limits.store.degraded is True
    assert statuses == [200, 200, 429]


async def test_redis_limit_is_shared_by_two_apps(
    settings_factory, client_for, redis_url, fake_plivo
):
    """Two app instances (replicas) on one Redis count one limit."""
    settings = settings_factory(rate_limit="3/minute", rate_limit_storage_url=redis_url)
    async with client_for(settings) as one, client_for(settings) as two:
        statuses = [
            (await c.post("/api/mms/send", json=VALID)).status_code for c in (one, two, one, two)
        ]
    assert statuses == [200, 200, 200, 429]


async def test_per_destination_limit_across_callers(
    settings_factory, client_for, storage_url, fake_plivo
):
    """2/hour to one number, whoever sends; other numbers unaffected; rejects don't count."""
    settings = settings_factory(
        api_keys=API_KEYS, rate_limit_per_destination="2/hour", rate_limit_storage_url=storage_url
    )
    async with client_for(settings) as client:
        assert (
            await client.post("/api/mms/send", json={**VALID, "text": ""}, headers=A)
        ).status_code == 422
        assert (await client.post("/api/mms/send", json=VALID, headers=A)).status_code == 200
        assert (await client.post("/api/mms/send", json=VALID, headers=B)).status_code == 200
        limited = await client.post("/api/mms/send", json=VALID, headers=B)
        other = await client.post("/api/mms/send", json={**VALID, "to": "+14155550101"}, headers=A)
    assert limited.status_code == 429
    assert limited.json()["code"] == "destination_rate_limited"
    assert 3000 <= int(limited.headers["retry-after"]) <= 3600
    assert other.status_code == 200
    assert len(fake_plivo.sends()) == 3


async def test_daily_quota_per_key(settings_factory, client_for, storage_url, fake_plivo):
    """2 sends per key per UTC day; Retry-After runs to midnight UTC; keys count apart."""
    settings = settings_factory(
        api_keys=API_KEYS, daily_quota_per_key=2, rate_limit_storage_url=storage_url
    )
    async with client_for(settings) as client:
        for i in range(2):
            body = {**VALID, "to": f"+1415555010{i}"}
            assert (await client.post("/api/mms/send", json=body, headers=A)).status_code == 200
        limited = await client.post(
            "/api/mms/send", json={**VALID, "to": "+14155550109"}, headers=A
        )
        other = await client.post("/api/mms/send", json={**VALID, "to": "+14155550108"}, headers=B)
    assert limited.status_code == 429
    assert limited.json()["code"] == "quota_exceeded"
    now = datetime.now(UTC)
    midnight = (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    assert abs(int(limited.headers["retry-after"]) - (midnight - now).total_seconds()) <= 5
    assert other.status_code == 200
    assert len(fake_plivo.sends()) == 3


async def test_quota_counts_sends_that_went_on_to_plivo(settings_factory, client_for, fake_plivo):
    """A send Plivo rejects still went on toward Plivo: it counts; a 422 does not."""
    settings = settings_factory(daily_quota_per_key=1)
    fake_plivo.script(fp.status(400, "bad number"))
    async with client_for(settings) as client:
        assert (await client.post("/api/mms/send", json={})).status_code == 422
        assert (await client.post("/api/mms/send", json=VALID)).status_code == 400
        response = await client.post("/api/mms/send", json={**VALID, "to": "+14155550101"})
    assert response.json()["code"] == "quota_exceeded"


async def test_memory_storage_sweeps_expired_entries_only():
    """The quiet sweep drops expired entries and counters, keeps live ones (limits' algorithm)."""
    from limits import parse

    from app.ratelimit import QuietMemoryStorage

    storage = QuietMemoryStorage()
    from limits.aio.strategies import FixedWindowRateLimiter, MovingWindowRateLimiter

    moving, fixed = MovingWindowRateLimiter(storage), FixedWindowRateLimiter(storage)
    short, long = parse("5/1second"), parse("5/hour")
    for _ in range(3):
        assert await moving.hit(short, "old")
        assert await moving.hit(long, "live")
        assert await fixed.hit(short, "counter")
        assert await moving.hit(short, "mixed")
    await asyncio.sleep(1.1)
    assert await moving.hit(short, "mixed")  # one live entry before three expired ones
    storage._sweep()
    keys = " ".join(storage.events)
    assert "old" not in keys and "live" in keys
    assert not any("counter" in k for k in storage.storage)
    assert (await moving.get_window_stats(long, "live")).remaining == 2
    [mixed] = [entries for key, entries in storage.events.items() if "mixed" in key]
    assert len(mixed) == 1 and (await moving.get_window_stats(short, "mixed")).remaining == 4


async def test_ready_reports_an_unreachable_redis_at_the_first_probe(settings_factory, client_for):
    """Configured but down: degraded from the first /ready on, before any send counted."""
    url = f"redis://127.0.0.1:{free_port()}/0"
    async with client_for(settings_factory(rate_limit_storage_url=url)) as client:
        response = await client.get("/ready")
    assert response.status_code == 200
    assert response.json()["degraded"] == ["rate_limit_storage"]


async def test_ready_with_a_reachable_redis_is_not_degraded(
    settings_factory, client_for, redis_url
):
    async with client_for(settings_factory(rate_limit_storage_url=redis_url)) as client:
        assert (await client.get("/ready")).json()["degraded"] == []


async def test_readiness_pings_redis_at_most_every_few_seconds(monkeypatch):
    """Probes share one cached PING: a load balancer probing often costs Redis little."""
    from app import ratelimit

    clock = [1000.0]
    monkeypatch.setattr(ratelimit.time, "monotonic", lambda: clock[0])
    store = ratelimit.LimitStore(f"redis://127.0.0.1:{free_port()}/0")
    pings: list[float] = []

    async def check() -> bool:
        pings.append(clock[0])
        return False

    monkeypatch.setattr(store._redis, "check", check)
    assert await store.reachable() is False
    clock[0] += ratelimit.PING_CACHE_SECONDS - 0.1
    assert await store.reachable() is False
    assert len(pings) == 1
    clock[0] += 0.2
    await store.reachable()
    assert len(pings) == 2


async def test_quiet_sweep_replaces_the_private_method_of_the_pinned_limits():
    """QuietMemoryStorage overrides a private method of limits' MemoryStorage. If an upgrade
    renames it, upstream's own sweep would silently come back: this fails instead."""
    from limits import parse
    from limits.aio.storage import MemoryStorage
    from limits.aio.strategies import MovingWindowRateLimiter

    from app.ratelimit import QuietMemoryStorage

    assert "_MemoryStorage__schedule_expiry" in vars(MemoryStorage)
    storage = QuietMemoryStorage()
    assert await MovingWindowRateLimiter(storage).hit(parse("5/minute"), "k")
    assert storage.timer is None  # upstream's sweep task was never started
    assert storage._next_sweep > 0  # ours ran instead


async def test_one_call_per_check_keeps_limits_own_data(storage_url):
    """Each check is one storage call (one script on Redis), on limits' keys and data:
    limits' own strategies read back exactly what the checks counted."""
    from limits import parse
    from limits.aio.strategies import FixedWindowRateLimiter, MovingWindowRateLimiter

    from app.ratelimit import DAY_SECONDS, LimitStore, _utc_day, remembering_keys

    store = LimitStore(storage_url)
    per_ip, per_destination = remembering_keys(parse("3/minute")), parse("2/hour")
    daily = 3

    async def stats(item, *key):
        return await store.run(lambda s: MovingWindowRateLimiter(s).get_window_stats(item, *key))

    async def quota_used():
        item = store._daily_item(daily)
        return await store.run(lambda s: s.get(item.key_for("quota", "alpha", _utc_day()[0])))

    verdicts = [await store.hit_with_window(per_ip, "ip", "10.0.0.1") for _ in range(4)]
    assert [(v.allowed, v.remaining) for v in verdicts] == [
        (True, 2),
        (True, 1),
        (True, 0),
        (False, 0),
    ]
    assert (await stats(per_ip, "ip", "10.0.0.1")).remaining == 0
    assert 55 < verdicts[-1].reset_at - time.time() <= 60

    def check(destination, *, count):
        return store.moving_and_daily(
            per_destination, ("dst", destination), daily, ("quota", "alpha"), count=count
        )

    destination, quota = await check("+14155550100", count=False)  # counts nothing
    assert destination.allowed and quota is not None and quota.allowed
    assert (await stats(per_destination, "dst", "+14155550100")).remaining == 2
    assert await quota_used() == 0
    for _ in range(2):
        destination, quota = await check("+14155550100", count=True)
        assert destination.allowed and quota.allowed
    assert (await stats(per_destination, "dst", "+14155550100")).remaining == 0
    assert await quota_used() == 2
    destination, quota = await check("+14155550100", count=True)  # the window refuses:
    assert not destination.allowed and quota is None  # the quota is not counted
    assert 3500 < destination.reset_at - time.time() <= 3600
    assert await quota_used() == 2
    destination, _ = await check("+14155550100", count=False)
    assert not destination.allowed and destination.remaining == 0
    destination, quota = await check("+14155550101", count=True)  # the 3rd of 3
    assert destination.allowed and quota.allowed and await quota_used() == 3
    destination, quota = await check("+14155550102", count=False)
    assert destination.allowed and not quota.allowed
    destination, quota = await check("+14155550102", count=True)  # a race: counted, refused
    assert destination.allowed and not quota.allowed and await quota_used() == 4
    day_item = store._daily_item(daily)
    assert not await store.run(
        lambda s: FixedWindowRateLimiter(s).test(day_item, "quota", "alpha", _utc_day()[0])
    )
    if storage_url.startswith("redis"):  # the counter's window is limits' own: one day
        import redis

        ttl = redis.Redis.from_url(storage_url).ttl(
            f"mms-gateway:{day_item.key_for('quota', 'alpha', _utc_day()[0])}"
        )
        assert DAY_SECONDS - 60 < ttl <= DAY_SECONDS
